"""Multi-fidelity: racing, successive halving, proxies; resume stays consistent."""
import json

import pytest
import torch

from evaluators import compute_statistics, parse_structure
from evaluators.fitness import FitnessEvaluator, Race
from metric_search.config import load_config
from metric_search.search import MetricSearch
from metric_search.store import RunStore


@pytest.fixture
def evaluator(tiny_model):
    """A tiny Llama trained to predict a noisy repeating sequence, so that pruning choices matter and
    windows differ (a random model's perplexity hardly depends on which weights go)."""
    gen = torch.Generator().manual_seed(11)
    pattern = torch.randint(3, 104, (8,), generator=gen)
    rows = []
    for shift in range(12):
        noise = torch.rand(24, generator=gen) < 0.15
        rows.append(torch.where(noise, torch.randint(3, 104, (24,), generator=gen), pattern.roll(shift).repeat(3)))
    windows = torch.stack(rows)
    optimiser = torch.optim.Adam(tiny_model.parameters(), lr=3e-3)
    tiny_model.train()
    for _ in range(60):
        tiny_model(input_ids=windows, labels=windows).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    tiny_model.eval()
    stats, _ = compute_statistics(tiny_model, windows[:4], {"source": "pattern"}, ("X",), progress=False)
    return FitnessEvaluator(tiny_model, stats, windows[4:], 0.5, parse_structure(None), batch_size=4)


GOOD = staticmethod(lambda W, X, **_: W.abs() * X)
BAD = staticmethod(lambda W, X, **_: -(W.abs() * X))  # prunes the most important weights


def test_clearly_worse_candidate_is_raced_out_after_min_windows(evaluator):
    good = evaluator.evaluate(GOOD)
    raced = evaluator.evaluate(BAD, race=Race(good.window_nll, min_windows=2, z=2.0))
    assert raced.status == "raced" and len(raced.window_nll) == 2
    assert raced.value == float("inf") and raced.fitness > good.fitness


def test_better_candidate_is_never_raced_out(evaluator):
    bad = evaluator.evaluate(BAD)
    for z in (0.0, 1.0, 2.0):
        for reference in (bad.window_nll, sum(bad.window_nll) / len(bad.window_nll)):
            good = evaluator.evaluate(GOOD, race=Race(reference, min_windows=1, z=z))
            assert good.status == "ok" and len(good.window_nll) == 8


def test_window_ranges_add_up(evaluator):
    full = evaluator.evaluate(GOOD)
    parts = evaluator.evaluate(GOOD, start=0, stop=3).window_nll + evaluator.evaluate(GOOD, start=3).window_nll
    assert parts == pytest.approx(full.window_nll)


def test_proxies_and_gate(evaluator):
    good, bad = evaluator.evaluate(GOOD, proxies=True), evaluator.evaluate(BAD, proxies=True)
    assert 0 <= good.proxies["recon"] < bad.proxies["recon"] <= 1
    gated = evaluator.evaluate(BAD, gate=good.proxies["recon"], proxies=True)
    assert gated.status == "gated" and gated.window_nll == []
    assert evaluator.evaluate(GOOD, proxies=True, reference="mul(abs(W), X)").proxies["overlap"] == pytest.approx(1.0)


@pytest.mark.parametrize("holds_scores", [True, False])  # False: an accelerator's path, scores computed again
def test_sampled_gate_skips_only_far_above_the_gate_and_changes_nothing_else(evaluator, holds_scores):
    from evaluators.fitness import SAMPLED_GATE_FACTOR

    evaluator.on_cpu = holds_scores
    good, bad = evaluator.evaluate(GOOD, proxies=True), evaluator.evaluate(BAD, proxies=True)
    scores = {name: evaluator.layer_scores(BAD, name) for name in evaluator.linears}
    assert evaluator.recon_estimate(scores.__getitem__, 1) == pytest.approx(bad.proxies["recon"])  # every row: exact
    estimate = evaluator.recon_estimate(scores.__getitem__, 2)
    skipped = evaluator.evaluate(BAD, gate=estimate / SAMPLED_GATE_FACTOR * 0.99, gate_rows=2, proxies=True)
    assert skipped.status == "gated" and skipped.mask_hash is None
    assert skipped.proxies == {"recon_sampled": pytest.approx(estimate)}
    for fn, gate in ((BAD, estimate / SAMPLED_GATE_FACTOR), (GOOD, good.proxies["recon"] * 1.01)):
        exact = evaluator.evaluate(fn, gate=gate, proxies=True)
        sampled = evaluator.evaluate(fn, gate=gate, gate_rows=2, proxies=True)
        assert (sampled.status, sampled.fitness, sampled.mask_hash, sampled.proxies) == \
            (exact.status, exact.fitness, exact.mask_hash, exact.proxies)  # not skipped: the exact rule decides


@pytest.fixture
def problem(tiny_checkpoint, text_dir):
    return [f"model={json.dumps(str(tiny_checkpoint))}", f"data={json.dumps('text:' + str(text_dir))}",
            "nsamples=4", "calib_seqlen=32", "fitness_windows=6", "fitness_seqlen=32", "population_size=6",
            "test_top_k=0", "seed=5", "sparsity=0.7"]


def test_racing_search_records_fidelity(problem, tmp_path):
    config = load_config(None, problem + ["iterations=12", "racing=true", "race_min_windows=2", "proxies=true"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    records = search.evaluations_
    assert all("recon" in r["proxies"] for r in records if r["status"] in ("ok", "raced"))
    for r in records:
        if r["status"] == "ok" and not r["cached"]:
            assert r["fidelity"] == 6
        if r["status"] == "raced":
            assert 2 <= r["fidelity"] < 6
    population = RunStore.open(tmp_path / "run").checkpoint()["population"]
    children = {r["expression"]: r["status"] for r in records if r["iteration"] > 0}
    assert all(children.get(expr, "ok") == "ok" for expr in population)  # a raced child never enters


def test_racing_initial_population_against_the_seeds(problem, tmp_path):
    config = load_config(None, problem + ["iterations=0", "racing=true", "race_min_windows=2", "race_z=0",
                                          'seed_metrics=["wanda"]'])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    records = {r["expression"]: r for r in search.evaluations_}
    seed = records["mul(abs(W), X)"]
    assert seed["status"] == "ok" and seed["fidelity"] == 6
    raced = [r for r in records.values() if r["status"] == "raced"]
    assert raced and all(2 <= r["fidelity"] < 6 and r["fitness"] > 0 for r in raced)
    state = RunStore.open(tmp_path / "run").checkpoint()
    assert len(state["population"]) == 6
    for expr, fitness in zip(state["population"], state["fitness"]):  # raced members keep their partial value
        if records[expr]["status"] in ("ok", "raced"):
            assert fitness == pytest.approx(records[expr]["fitness"])
        else:
            assert fitness is None
    assert state["population"][0] == "mul(abs(W), X)" or records[state["population"][0]]["status"] == "ok"


def test_successive_halving(problem, tmp_path):
    config = load_config(None, problem + ["mode=generational", "iterations=1", "offspring=8",
                                          "successive_halving=true", "halving_min_windows=2"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    new = [r for r in search.evaluations_ if r["iteration"] == 1 and not r["cached"]]
    halved = [r for r in new if r["status"] == "halved"]
    complete = [r for r in new if r["status"] == "ok"]
    assert halved and complete
    assert {r["fidelity"] for r in halved} <= {2, 4} and {r["fidelity"] for r in complete} == {6}
    worst_complete = max(sum(r["window_nll"][:2]) for r in complete)
    assert any(sum(r["window_nll"][:2]) >= worst_complete for r in halved if r["fidelity"] == 2)


@pytest.mark.parametrize("against, rank", [("top_k", 3), ("worst", 6)])
def test_race_and_gate_reference_the_member_a_child_must_beat(problem, tmp_path, against, rank):
    """Steady state races against the top_k-th member (the last possible parent) or the worst."""
    from primitives import rank_key

    config = load_config(None, problem + ["iterations=0", "racing=true", "proxy_gate=true", "top_k=3",
                                          f"race_against={against}", "proxy_gate_margin=1.2"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    population, _ = search._restore(search.store.checkpoint())
    for i, ind in enumerate(population):  # members 1..6, each with its own windows and recon
        search.pool.by_key[rank_key(ind)] = {"status": "ok", "fitness": 10.0 + i, "window_nll": [float(i)] * 6,
                                             "proxies": {"recon": 0.1 * (i + 1)}}
    request = search._request(population)
    assert request.race.reference_nll == [float(rank - 1)] * 6
    assert request.gate == pytest.approx(0.1 * rank * 1.2)  # above every rival's recon, with a margin


def test_race_against_and_gate_margin_must_be_valid(problem):
    from metric_search.config import ConfigError

    with pytest.raises(ConfigError, match="race_against"):
        load_config(None, problem + ["race_against=median"])
    with pytest.raises(ConfigError, match="proxy_gate_margin"):
        load_config(None, problem + ["proxy_gate_margin=0.9"])
    with pytest.raises(ConfigError, match="proxy_gate_rows"):
        load_config(None, problem + ["proxy_gate_rows=0"])


def test_a_run_saved_before_a_key_existed_reads_as_it_ran(problem, tmp_path):
    config = load_config(None, problem + ["iterations=0", "racing=true"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("race_against", "proxy_gate_margin", "proxy_gate_rows"):
        del saved[key]
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    old = MetricSearch.from_run(tmp_path / "run").config
    assert (old.race_against, old.proxy_gate_margin, old.proxy_gate_rows) == ("worst", 1.0, 1)
    assert search.config.race_against == "top_k"


def test_resume_keeps_the_rival_of_a_racing_run(problem, tmp_path):
    """Raced records are reused by the key cache on resume, so what decided them cannot change."""
    from metric_search.config import ConfigError

    config = load_config(None, problem + ["iterations=1", "racing=true", "top_k=3"])
    MetricSearch(config, progress=False).fit(tmp_path / "run")
    for override in ("top_k=5", "race_against=worst", "race_z=1", "proxy_gate_margin=1.5"):
        with pytest.raises(ConfigError, match="old rival"):
            MetricSearch.resume(tmp_path / "run", [override], progress=False)
    search = MetricSearch.resume(tmp_path / "run", ["iterations=2"], progress=False)
    assert int(search.logbook_[-1]["iteration"]) == 2


def _record(iteration, fitness, status="ok", window_nll=None):
    return {"iteration": iteration, "fitness": fitness, "status": status, "window_nll": window_nll or [],
            "expression": f"{status}-{iteration}-{fitness}"}


def test_replay_finds_each_childs_rival():
    from metric_search.results.audit import replay_rivals

    records = [_record(0, 10.0), _record(0, 14.0), _record(0, 30.0, "raced"),  # initial population of 3
               _record(1, 12.0), _record(2, None, "gated"), _record(3, 50.0, "raced"), _record(4, 11.0)]
    pairs = replay_rivals(records, population_size=3, race_rank=2)
    rivals = {child["iteration"]: rival["fitness"] for child, rival in pairs}
    # a raced initial member keeps its partial value; 12 enters, so the 2nd best is 12 from iteration 2 on
    assert rivals == {1: 14.0, 2: 12.0, 3: 12.0, 4: 12.0}
    assert [child["iteration"] for child, _ in pairs] == [1, 2, 3, 4]


def test_audit_reproduces_the_runs_own_racing_decisions(problem, tmp_path):
    """Replaying a racing run finds the rival that raced each child out; re-racing a raced child against
    it stops at the same window, so the audit of gated children applies the run's own rule."""
    from metric_search.results.audit import audit_skipped, replay_agrees, replay_rivals

    config = load_config(None, problem + ["iterations=16", "racing=true", "race_min_windows=2", "top_k=3"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    pairs = replay_rivals(search.evaluations_, config.population_size, search.race_rank())
    agree, raced = replay_agrees(search, pairs)
    assert raced > 0 and agree == raced
    rows = audit_skipped(search, "raced", progress=False)
    recorded = {c["expression"]: c["fidelity"] for c, _ in pairs if c["status"] == "raced"}
    assert len(rows) == raced
    assert all(row["status"] == "raced" and row["windows"] == recorded[row["expression"]] for row in rows)
    assert not any(row["beats_rival"] for row in rows)
