"""Auditing a multi-fidelity run: would the candidates it skipped have changed anything?

A steady-state child only matters if it beats its *rival* (the ``top_k``-th member, or the worst with
``race_against = "worst"``). Racing stops a child once it is certainly worse than the rival; the proxy gate
skips the forward altogether when the child's reconstruction proxy exceeds every rival's. The gate's skips
are only as good as the proxy, so this module replays the run to find each skipped child's rival and then
evaluates the child against it with the run's own racing rule, as the run would have without the gate:

    rows = audit_skipped(MetricSearch.from_run("runs/gate"))
    sum(row["beats_rival"] for row in rows)   # false skips: children the gate should have forwarded

The replay needs nothing beyond ``evaluations.jsonl``: the population after each iteration is the
``population_size`` best records so far (only complete records carry a finite fitness; an initial member
raced out against the seeds keeps its partial perplexity), exactly as ``MetricSearch._survivors`` keeps it.
"""
from __future__ import annotations

from tqdm.auto import tqdm

from evaluators.fitness import Race
from primitives import compile_tree, parse

from ..evaluation import member_fitness
from ..worker import evaluator_for, problem


def replay_rivals(records: list[dict], population_size: int, race_rank: int) -> list[tuple[dict, dict]]:
    """``(child, rival)`` for every child record evaluated against a full population, in file order.

    The rival is the ``race_rank``-th best member of the population the child's iteration started from.
    """
    population: list[tuple[float, dict]] = []
    pairs, iteration, rival = [], None, None
    for record in records:
        if record["iteration"] != iteration:  # children of one iteration share the population before it
            iteration = record["iteration"]
            full = iteration > 0 and len(population) >= population_size
            rival = population[race_rank - 1][1] if full else None
        if rival is not None:
            pairs.append((record, rival))
        population.append((member_fitness(record, record["iteration"] == 0), record))
        population.sort(key=lambda pair: pair[0])  # stable: among ties the older member stays first
        del population[population_size:]
    return pairs


def race_for(search, rival: dict) -> Race:
    return search.race_against(rival)


def replay_agrees(search, pairs: list[tuple[dict, dict]]) -> tuple[int, int]:
    """How many raced records the replayed rivals explain (lost at their last window, not before), of all."""
    raced = [(child, rival) for child, rival in pairs if child["status"] == "raced" and child["window_nll"]]
    agree = 0
    for child, rival in raced:
        race, nll = race_for(search, rival), child["window_nll"]
        agree += race.lost(nll) and not race.lost(nll[:-1])
    return agree, len(raced)


def audit_skipped(search, status: str = "gated", limit: int | None = None, progress: bool = True) -> list[dict]:
    """Evaluate the run's ``status`` records (gated, by default) against their replayed rivals with racing.

    Each row: the expression, its proxy values, the windows forwarded, the perplexity reached (partial if
    raced out), the rival's fitness, and ``beats_rival`` (complete and better than the rival: a false skip).
    """
    cfg = search.config
    pairs = replay_rivals(search.evaluations_, cfg.population_size, search.race_rank())
    pairs = [(child, rival) for child, rival in pairs if child["status"] == status]
    pairs = pairs[:limit] if limit else pairs
    evaluator = evaluator_for(problem(cfg.to_dict()), progress=progress)
    rows = []
    for child, rival in tqdm(pairs, desc=f"auditing {status} candidates", disable=not progress):
        result = evaluator.evaluate(compile_tree(parse(child["expression"])), race=race_for(search, rival))
        complete = result.status == "ok"
        rows.append({"expression": child["expression"], "iteration": child["iteration"],
                     "proxies": child["proxies"], "status": result.status, "windows": len(result.window_nll),
                     "perplexity": result.fitness, "rival_fitness": rival["fitness"],
                     "beats_rival": bool(complete and result.fitness < rival["fitness"])})
    return rows

