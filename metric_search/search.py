"""``MetricSearch``: the one object a user drives (PySR-like: parameters in, results in ``*_`` attributes).

    search = MetricSearch(SearchConfig(iterations=50)).fit("runs/demo")
    search.best_["expression"], search.hall_of_fame_[:3]
    MetricSearch.from_run("runs/demo")            # reload results
    MetricSearch.resume("runs/demo", ["iterations=100"])  # continue or extend

Two loops: ``steady`` (Pruner-Zero's Algorithm 1: parents by tournament among the top-k, subtree crossover,
node mutation, OOS on the child, regenerate duplicates, evaluate, drop the worst) and ``generational``
(DEAP's ``varOr`` + (mu + lambda) selection). All randomness comes from ``random`` (DEAP's source),
seeded from ``config.seed`` and checkpointed each iteration, so a resumed run replays exactly what an
uninterrupted one does; evaluations finished before a kill are cache hits on replay.
"""
from __future__ import annotations

import math
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from deap import algorithms
from tqdm.auto import tqdm

from evaluators.checkpoint import versions
from evaluators.data import calibration_split, check_source
from evaluators.fitness import EvaluationRequest, Race
from evaluators.models import check_model_spec
from primitives import ExpressionError, parse, rank_key, simplify_tree, to_string

from .config import RIVAL_KEYS, ConfigError, SearchConfig, load_config
from .evaluation import CandidatePool, fitness_of, member_fitness
from .final import test_perplexities
from .store import HALL_OF_FAME, LOGBOOK, RunStore
from .toolbox import KNOWN_METRICS, build_toolbox, individual
from .worker import evaluator_for, problem

HOF_COLUMNS = ["rank", "chosen", "complexity", "fitness", "test_perplexity", "expression", "canonical_key"]
LOG_COLUMNS = ["iteration", "requested", "computed", "key_hits", "mask_hits", "failed", "raced", "gated", "halved",
               "windows", "best_fitness", "median_fitness", "best_expression", "elapsed_s"]


class MetricSearch:
    """Genetic-programming search for a pruning metric; see the module docstring."""

    def __init__(self, config: SearchConfig | None = None, progress: bool = True):
        self.config = (config or SearchConfig()).validate()
        self.progress = progress

    # ---------------------------------------------------------------- user entry points
    def fit(self, run_dir: str | Path | None = None) -> "MetricSearch":
        """Start a new run in ``run_dir`` (default ``<output_dir>/<name>``) and run it to the end.

        Everything is checked, and the model and its statistics loaded, before the run directory is made:
        a set-up that fails leaves nothing behind, so the same command can simply be run again."""
        run_dir = Path(run_dir or Path(self.config.output_dir) / self.config.name)
        self.config = self.config.settled()  # device checked, its defaults saved with the run
        RunStore.check_new(run_dir)
        self._set_up()
        record = {**self.config.to_dict(), "versions": versions(), "run_dir": str(run_dir)}
        self.store = RunStore.create(run_dir, record)
        try:
            return self._run()
        finally:
            self.store.unlock()

    @classmethod
    def resume(cls, run_dir, overrides: list[str] = (), progress: bool = True) -> "MetricSearch":
        """Continue a stopped or killed run; ``iterations=N`` in ``overrides`` extends a finished one."""
        store = RunStore.open(run_dir)
        saved = store.config()
        base = {k: v for k, v in saved.items() if k not in ("versions", "run_dir")}
        config = load_config(None, overrides, base)
        changed = {k for k in problem(base) if problem(config.to_dict())[k] != base[k]}
        if changed:
            raise ConfigError(f"cannot change {', '.join(sorted(changed))} when resuming (it changes every fitness)")
        if base.get("racing") or base.get("proxy_gate"):
            changed = {k for k in RIVAL_KEYS if k in base and getattr(config, k) != base[k]}
            if changed:
                raise ConfigError(f"cannot change {', '.join(sorted(changed))} when resuming a run with racing or a "
                                  f"proxy gate (its raced and gated records were decided against the old rival)")
        search = cls(config, progress)
        search.store = store
        store.lock()
        try:
            dropped = store.repair()
            if dropped:
                print(f"{store.path}: dropped the torn last line of evaluations.jsonl ({dropped} bytes, what a kill "
                      f"mid-write leaves); that candidate is evaluated again", file=sys.stderr)
            search._set_up()
            store.write_config({**saved, **config.to_dict()})
            return search._run()
        finally:
            store.unlock()

    @classmethod
    def from_run(cls, run_dir) -> "MetricSearch":
        """Reload a run's results without running anything."""
        store = RunStore.open(run_dir)
        saved = store.config()
        search = cls(load_config(None, [], {k: v for k, v in saved.items() if k not in ("versions", "run_dir")}),
                     progress=False)
        search.store = store
        search._collect()
        return search

    # ---------------------------------------------------------------- the loop
    def _set_up(self) -> None:
        """Check everything a run reads — operators and leaves, seed metrics, model spec, text source — then
        load the model and its statistics (once, here, before any worker)."""
        cfg = self.config
        try:
            self.toolbox, self.pset = build_toolbox(cfg)
        except ValueError as err:  # an operator or leaf that is not registered
            raise ConfigError(str(err)) from None
        self.seeds = []
        for seed in cfg.seed_metrics:
            try:
                self.seeds.append(individual(parse(KNOWN_METRICS.get(seed, seed), self.pset)))
            except ExpressionError as err:
                raise ConfigError(f"seed_metrics: {seed!r} is neither a known metric ({', '.join(KNOWN_METRICS)}) "
                                  f"nor an expression over this search's operators and leaves: {err}") from None
        check_model_spec(cfg.model)
        for split in {calibration_split(cfg.data), "valid"}:  # calibration and fitness windows
            check_source(cfg.data, split, cfg.data_dir or None)
        if cfg.test_top_k:
            check_source(cfg.data, "test", cfg.data_dir or None)
        self.spec = problem(cfg.to_dict())
        evaluator_for(self.spec, progress=self.progress)

    def _run(self) -> "MetricSearch":
        cfg = self.config
        self.pool = CandidatePool(self.store, self.spec, cfg.n_jobs)
        self.started = time.perf_counter()
        self.log_rows = self.store.read_table(LOGBOOK)
        state = self.store.checkpoint()
        if state is None:
            random.seed(cfg.seed)
            population, seeded = self._initial_population()
            self._assign(population, self._evaluate_initial(population, seeded), initial=True)
            population = self._survivors(population)
            iteration = 0
            self._checkpoint(population, iteration)
        else:
            population, iteration = self._restore(state)
        total = cfg.iterations
        bar = tqdm(total=total, initial=min(iteration, total), desc="search", disable=not self.progress)
        step = self._generation if cfg.mode == "generational" else self._steady_step
        while iteration < total and not self._out_of_time():
            population, done = step(population, iteration)
            iteration += done
            self._checkpoint(population, iteration)
            bar.update(done)
            self._report(iteration, total)
        bar.close()
        self._finish()
        return self

    def _out_of_time(self) -> bool:
        return self.config.max_seconds > 0 and time.perf_counter() - self.started > self.config.max_seconds

    def _request(self, population: list) -> EvaluationRequest:
        """How the next candidates are evaluated (multi-fidelity), from the current (sorted) population."""
        cfg, request = self.config, EvaluationRequest()
        records = [self.pool.by_key.get(rank_key(ind)) for ind in population]
        if cfg.proxies or cfg.proxy_gate:
            request = replace(request, proxies=True, reference=to_string(population[0]) if population else None)
        if len(population) < cfg.population_size:
            return request
        rivals = records[:self.race_rank()]  # the members a child must beat to change anything
        if cfg.proxy_gate:
            recon = [r["proxies"].get("recon") for r in rivals if r and r.get("proxies")]
            if recon and len(recon) == len(rivals) and all(v is not None for v in recon):
                request = replace(request, gate=max(recon) * cfg.proxy_gate_margin, gate_rows=cfg.proxy_gate_rows)
        rival = rivals[-1] if rivals else None
        if cfg.racing and rival and rival["status"] in ("ok", "raced"):
            request = replace(request, race=self.race_against(rival))
        return request

    def race_rank(self) -> int:
        """How many members a child must not be certainly worse than. In steady state parents are drawn
        from the ``top_k`` best, and a member never moves up (only the worst leaves, children enter above
        it), so a child that cannot beat the ``top_k``-th best can never be a parent nor the best: racing
        against it spends the forward only where it can change the search ("top_k"). "worst" races
        against the population's last member, Pruner-Zero's acceptance rule."""
        cfg = self.config
        if cfg.race_against == "top_k" and cfg.mode == "steady":
            return min(cfg.top_k, cfg.population_size)
        return cfg.population_size

    def race_against(self, record: dict) -> Race:
        """The ``Race`` of a child against ``record`` (its windows, else its mean NLL)."""
        cfg = self.config
        reference = record["window_nll"] or math.log(record["fitness"])
        return Race(reference, cfg.race_min_windows, cfg.race_z, cfg.race_chunk or 1)

    def _evaluate_initial(self, population: list, seeded: int) -> list[dict]:
        """Records of the initial population, whose first ``seeded`` members are the seed metrics. With
        racing, the seeds are evaluated in full first and every random member is raced against the worst."""
        request = self._request([])
        with tqdm(total=len(population), desc="initial population", disable=not self.progress) as bar:
            if not (self.config.racing and seeded and self.config.mode == "steady"):
                return self.pool.evaluate(population, 0, request, bar)
            first = self.pool.evaluate(population[:seeded], 0, request, bar)
            complete = [r for r in first if r["status"] == "ok"]
            if complete:
                request = replace(request, race=self.race_against(max(complete, key=fitness_of)))
            return first + self.pool.evaluate(population[seeded:], 0, request, bar)

    def _initial_population(self) -> tuple[list, int]:
        """The seed metrics (duplicates dropped), then unique random trees; and how many are seeds."""
        population, keys = [], set()
        for ind in self.seeds:
            if rank_key(ind) not in keys:
                population.append(ind)
                keys.add(rank_key(ind))
        seeded = len(population)
        while len(population) < self.config.population_size:
            ind = self._unique(self.toolbox.individual, keys)
            population.append(ind)
            keys.add(rank_key(ind))
        return population, seeded

    def _unique(self, make, keys: set):
        """``make()`` until its OOS-simplified tree has a rank key outside ``keys`` (bounded tries)."""
        for _ in range(self.config.max_regenerate):
            ind = individual(simplify_tree(make()))
            if rank_key(ind) not in keys:
                return ind
        return ind

    def _child(self, population: list, keys: set):
        elite = sorted(population, key=lambda ind: ind.fitness.values[0])[: self.config.top_k]

        def make():
            first, second = (self.toolbox.clone(p) for p in self.toolbox.select(elite, 2))
            child, _ = self.toolbox.mate(first, second)
            if random.random() < self.config.mutation_prob:
                child, = self.toolbox.mutate(child)
            return child
        return self._unique(make, keys)

    def _steady_step(self, population: list, iteration: int):
        batch = max(1, self.config.n_jobs if self.config.n_jobs > 0 else 1)
        batch = min(batch, self.config.iterations - iteration)
        keys = {rank_key(ind) for ind in population}
        children = []
        for _ in range(batch):
            child = self._child(population, keys)
            keys.add(rank_key(child))
            children.append(child)
        self._assign(children, self.pool.evaluate(children, iteration + 1, self._request(population)))
        return self._survivors(population + children), batch

    def _generation(self, population: list, iteration: int):
        cfg = self.config
        keys = {rank_key(ind) for ind in population}
        offspring = []
        for ind in algorithms.varOr(population, self.toolbox, cfg.offspring, cfg.crossover_prob, cfg.mutation_prob):
            child = individual(simplify_tree(ind))
            if rank_key(child) in keys:
                child = self._unique(lambda: self.toolbox.mutate(self.toolbox.clone(ind))[0], keys)
            keys.add(rank_key(child))
            offspring.append(child)
        request = replace(self._request(population), race=None)  # racing is steady-state's; generational halves
        if cfg.successive_halving:
            records = self.pool.evaluate_halving(offspring, iteration + 1, cfg.fitness_windows,
                                                 cfg.halving_min_windows, request)
        else:
            records = self.pool.evaluate(offspring, iteration + 1, request)
        self._assign(offspring, records)
        return self._survivors(population + offspring), 1

    def _survivors(self, individuals: list) -> list:
        # sorted() is stable: among equal fitness the older individual survives, deterministically
        return sorted(individuals, key=lambda ind: ind.fitness.values[0])[: self.config.population_size]

    @staticmethod
    def _assign(individuals, records, initial: bool = False) -> None:
        """Fitness from records. An initial member raced out against the seeds keeps its partial
        perplexity: it is certainly worse than every seed, and a finite value keeps the population full
        and ordered (it is the first to be replaced, and the racing reference while it is the worst)."""
        for ind, record in zip(individuals, records):
            ind.fitness.values = (member_fitness(record, initial),)

    # ---------------------------------------------------------------- persistence
    def _checkpoint(self, population: list, iteration: int) -> None:
        """Tables first, checkpoint last: a kill in between leaves table rows that resume discards."""
        fitness = [ind.fitness.values[0] for ind in population]
        ok = [f for f in fitness if math.isfinite(f)]
        best = population[0]
        self.log_rows.append({
            "iteration": iteration, **self.pool.counts,
            "best_fitness": f"{best.fitness.values[0]:.4f}",
            "median_fitness": f"{statistics.median(ok):.4f}" if ok else "",
            "best_expression": to_string(best), "elapsed_s": f"{time.perf_counter() - self.started:.1f}",
        })
        self.store.write_table(LOGBOOK, self.log_rows, LOG_COLUMNS)
        self._write_hall_of_fame()
        self.store.write_checkpoint({
            "iteration": iteration,
            "population": [to_string(ind) for ind in population],
            "fitness": [f if math.isfinite(f) else None for f in fitness],
            "random_state": _encode_random(random.getstate()),
            "numpy_state": _encode_numpy(np.random.get_state()),
            "torch_state": torch.get_rng_state().tolist(),
            "counts": self.pool.counts,
        })

    def _restore(self, state: dict):
        random.setstate(_decode_random(state["random_state"]))
        np.random.set_state(_decode_numpy(state["numpy_state"]))
        torch.set_rng_state(torch.tensor(state["torch_state"], dtype=torch.uint8))
        self.pool.counts.update(state["counts"])
        self.log_rows = [row for row in self.log_rows if int(row["iteration"]) <= state["iteration"]]
        population = [individual(parse(expr, self.pset)) for expr in state["population"]]
        for ind, f in zip(population, state["fitness"]):
            ind.fitness.values = (math.inf if f is None else f,)
        return population, state["iteration"]

    # ---------------------------------------------------------------- results
    def _hall_of_fame(self, records: list[dict], tests: dict | None = None) -> list[dict]:
        seen, rows = set(), []
        for record in sorted((r for r in records if r["status"] == "ok"), key=fitness_of):
            if record["mask_hash"] in seen:
                continue
            seen.add(record["mask_hash"])
            rows.append({"rank": len(rows) + 1, "chosen": "*" if not rows else "", "complexity": record["size"],
                         "fitness": round(record["fitness"], 4), "expression": record["expression"],
                         "canonical_key": record["canonical_key"],
                         "test_perplexity": (tests or {}).get(record["expression"], "")})
            if len(rows) == self.config.hall_of_fame:
                break
        return rows

    def _write_hall_of_fame(self, tests: dict | None = None) -> None:
        rows = self._hall_of_fame(list(self.pool.by_key.values()), tests)
        self.store.write_table(HALL_OF_FAME, rows, HOF_COLUMNS)

    def _finish(self) -> None:
        tests = test_perplexities(self, self._hall_of_fame(list(self.pool.by_key.values()))[: self.config.test_top_k])
        self._write_hall_of_fame(tests)
        self._collect()
        if self.progress:
            print(self.table())

    def _collect(self) -> None:
        self.run_dir_ = self.store.path
        self.evaluations_ = self.store.evaluations()
        self.hall_of_fame_ = self.store.read_table(HALL_OF_FAME)
        self.logbook_ = self.store.read_table(LOGBOOK)
        self.best_ = self.hall_of_fame_[0] if self.hall_of_fame_ else None

    def _report(self, iteration: int, total: int) -> None:
        if not self.progress:
            return
        row = self.log_rows[-1]
        elapsed = time.perf_counter() - self.started
        done_here = max(1, iteration - int(self.log_rows[0]["iteration"]))
        left = elapsed / done_here * (total - iteration)
        if self.config.max_seconds > 0:
            left = min(left, max(0.0, self.config.max_seconds - elapsed))
        tqdm.write(f"iter {iteration}/{total} | requested {row['requested']} computed {row['computed']} "
                   f"cache {int(row['key_hits']) + int(row['mask_hits'])} | best {row['best_fitness']} "
                   f"{row['best_expression']} | {left / 60:.1f} min left")

    def table(self) -> str:
        """The hall of fame as a PySR-style text table; ``*`` marks the chosen metric."""
        rows = self.hall_of_fame_ if hasattr(self, "hall_of_fame_") else []
        lines = [f"{'':1} {'rank':>4} {'size':>4} {'fitness':>10} {'test ppl':>9}  expression"]
        for r in rows:
            test = f"{float(r['test_perplexity']):.3f}" if r.get("test_perplexity") not in ("", None) else "-"
            lines.append(f"{r['chosen'] or ' ':1} {r['rank']:>4} {r['complexity']:>4} {float(r['fitness']):>10.3f} "
                         f"{test:>9}  {r['expression']}")
        return "\n".join(lines)


def _encode_random(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _decode_random(data):
    return (data[0], tuple(data[1]), data[2])


def _encode_numpy(state):
    return [state[0], state[1].tolist(), *state[2:]]


def _decode_numpy(data):
    return (data[0], np.array(data[1], dtype=np.uint32), *data[2:])
