"""Analysis of evaluations.jsonl: numbers equal a direct scipy computation; report, plots, compare, CLI."""
import json
import math
import random

import numpy as np
import pytest
from deap import gp
from scipy import stats as st

from metric_search.results.analysis import analyze_run, holm, load_candidates, pareto_front
from metric_search.cli import main
from metric_search.results.compare import compare_runs
from primitives import leaves_used, make_primitive_set, parse, to_string
from test_metrics import make_run


def synthetic_candidates(n=60, seed=0):
    """Random trees whose log-perplexity rises with size and falls when X is used (plus noise); every
    seventh candidate is invalid."""
    random.seed(seed)
    pset = make_primitive_set(operators=["abs", "sqr", "log", "mms", "add", "mul", "div"])
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, 1, 4))
        expression = to_string(tree)
        if expression in seen:
            continue
        seen.add(expression)
        log_ppl = 3 + 0.08 * len(tree) - 0.8 * ("X" in leaves_used(tree)) + rng.normal(0, 0.1)
        out.append((expression, None if len(out) % 7 == 3 else float(math.exp(log_ppl))))
    return out


@pytest.fixture(scope="module")
def candidates():
    return synthetic_candidates()


def test_correlations_and_attribution_match_scipy(tmp_path, candidates):
    run = make_run(tmp_path / "syn", candidates + [("mul(abs(W), X)", 25.0)])
    summary = analyze_run(run, plots=True)
    records = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["status"] == "ok"]
    assert summary["n_invalid"] == len(records) - len(valid) == 9 and summary["n_valid"] == len(valid)
    y = np.log([r["fitness"] for r in valid])
    corr = {r["feature"]: r for r in summary["correlations"]}
    trees = [parse(r["expression"]) for r in valid]
    features = {"size": [r["size"] for r in valid], "height": [r["height"] for r in valid],
                "leaf X": ["X" in leaves_used(t) for t in trees],
                "op mul": [any(isinstance(n, gp.Primitive) and n.name == "mul" for n in t) for t in trees]}
    for name, x in features.items():
        rho, p_rho = st.spearmanr(x, y)
        tau, p_tau = st.kendalltau(x, y)
        assert corr[name]["spearman_rho"] == pytest.approx(rho) and corr[name]["spearman_p"] == pytest.approx(p_rho)
        assert corr[name]["kendall_tau"] == pytest.approx(tau) and corr[name]["kendall_p"] == pytest.approx(p_tau)
    assert corr["size"]["spearman_rho"] > 0.3 and corr["leaf X"]["spearman_rho"] < -0.3  # the planted effects
    att = {r["feature"]: r for r in summary["attribution"]}
    has_x = np.array(features["leaf X"])
    assert att["leaf X"]["geo_with"] == pytest.approx(math.exp(y[has_x].mean()))
    assert att["leaf X"]["geo_without"] == pytest.approx(math.exp(y[~has_x].mean()))
    assert att["leaf X"]["mw_p"] == pytest.approx(st.mannwhitneyu(y[has_x], y[~has_x]).pvalue)
    # principles are generated from these numbers
    text = " ".join(summary["principles"])
    assert "Metrics using X have lower perplexity" in text and "Larger trees had higher perplexity" in text
    assert "9 of 61 evaluated candidates" in text and "wanda (25" in text
    # the files
    out = run / "analysis"
    for name in ("report.md", "summary.json", "correlations.csv", "attribution.csv", "pareto.csv", "top.csv",
                 "fitness.png", "pareto.png", "correlations.png", "attribution.png", "groups.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "9 invalid or failed" in report and "## Pareto front" in report and "![rank correlations]" in report
    assert (out / "fitness.png").read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_and_holm():
    cands = [{"size": s, "fitness": f, "order": i} for i, (s, f) in enumerate([(3, 50), (3, 40), (5, 45), (5, 30),
                                                                                 (7, 30), (9, 10), (2, 90)])]
    assert [(c["size"], c["fitness"]) for c in pareto_front(cands)] == [(2, 90), (3, 40), (5, 30), (9, 10)]
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def test_robust_to_tiny_and_invalid_runs(tmp_path):
    run = make_run(tmp_path / "bad", [("sub(W, W)", None), ("abs(W)", 12.0), ("sub(X, X)", None)])
    summary = analyze_run(run)
    assert summary["n_valid"] == 1 and summary["correlations"] == []
    assert "too few for correlations" in summary["principles"][-1]
    lines = (run / "evaluations.jsonl").read_text() + '{"iteration": 9, "expr'  # a line cut by a kill
    (run / "evaluations.jsonl").write_text(lines)
    assert [c["expression"] for c in load_candidates(run)["valid"]] == ["abs(W)"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "evaluations.jsonl").write_text("")
    assert analyze_run(tmp_path / "empty")["principles"] == ["The run has no evaluations yet."]


def test_partial_fidelity_candidates(tmp_path, candidates):
    """Raced/halved candidates join the correlations with their partial estimate, never the rankings; gated
    ones (no perplexity) are only counted."""
    extra = [("sqr(sqr(G))", 900.0, "raced"), ("mms(sqr(G))", 800.0, "halved"), ("log(G)", None, "gated"),
             ("sqr(W)", 1.0, "raced")]
    run = make_run(tmp_path / "mf", candidates[:30] + extra)
    s = analyze_run(run, plots=True)
    n_ok = sum(1 for _, f in candidates[:30] if f)
    assert (s["n_full"], s["n_partial"], s["n_skipped"]) == (n_ok, 3, 1)
    assert s["statuses"] == {"ok": n_ok, "invalid": 30 - n_ok, "raced": 2, "halved": 1, "gated": 1}
    assert all(c["expression"] != "sqr(W)" for c in s["top"] + s["pareto"])  # 1.0 is partial: not ranked
    assert {r["n"] for r in s["correlations"]} == {n_ok + 3}
    assert "3 candidates were stopped early" in " ".join(s["principles"])
    s = analyze_run(run, plots=False, partial=False)
    assert (s["n_valid"], s["n_skipped"]) == (n_ok, 4) and {r["n"] for r in s["correlations"]} == {n_ok}


def test_compare_runs_rank_transfer(tmp_path, candidates):
    base = [(e, f) for e, f in candidates[:30]]
    a = make_run(tmp_path / "a", base)
    b = make_run(tmp_path / "b", [(e, f ** 1.5 if f else None) for e, f in base])  # same order, other scale
    c = make_run(tmp_path / "c", [(e, 1e4 / f if f else None) for e, f in base[:20]], config={"sparsity": 0.6})
    result = compare_runs([a, b, c], plots=True)
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    ab, ac = pairs[("a", "b")], pairs[("a", "c")]

    def best_by_key(run):  # the valid candidates by rank key (the best fitness when a key repeats)
        out = {}
        for r in load_candidates(run)["valid"]:
            out[r["rank_key"]] = min(out.get(r["rank_key"], math.inf), r["fitness"])
        return out

    fa, fc = best_by_key(a), best_by_key(c)
    assert ab["n_shared"] == len(fa) and ab["spearman_rho"] == pytest.approx(1.0)
    shared = [k for k in fa if k in fc]
    rho, p = st.spearmanr([fa[k] for k in shared], [fc[k] for k in shared])
    tau, p_tau = st.kendalltau([fa[k] for k in shared], [fc[k] for k in shared])
    assert ac["n_shared"] == len(shared) and ac["spearman_rho"] == pytest.approx(rho) and rho < -0.5
    assert ac["spearman_p"] == pytest.approx(p) and ac["kendall_tau"] == pytest.approx(tau)
    assert ac["kendall_p"] == pytest.approx(p_tau)
    assert ac["differences"] == {"sparsity": (0.5, 0.6)}
    text = " ".join(result["sentences"])
    assert "transfers strongly from a to b" in text and "(inverted)" in text
    out = a / "analysis" / "compare"
    assert (out / "compare.md").is_file() and (out / "compare_1_2.png").is_file()


def test_analyze_cli(tmp_path, candidates, capsys):
    a = make_run(tmp_path / "a", candidates[:25])
    b = make_run(tmp_path / "b", candidates[:25])
    assert main(["analyze", str(a), "--no-plots", "--top", "5"]) == 0
    assert "report:" in capsys.readouterr().out and not (a / "analysis" / "fitness.png").exists()
    assert main(["analyze", str(a), str(b), "--compare", "--output", str(tmp_path / "cmp"), "--no-plots"]) == 0
    assert (tmp_path / "cmp" / "compare.md").is_file()
    for args, needle in (([str(tmp_path / "missing")], "no run directory"), ([str(a), str(b)], "--compare"),
                         ([str(a), "--compare"], "at least two"),
                         ([str(a), "--reevaluate", "--sparsity", "1.5"], "strictly between"),
                         ([str(a), "--reevaluate", "--dtype", "int8"], "unknown dtype")):
        capsys.readouterr()
        assert main(["analyze", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_reevaluate_hall_of_fame_on_tiny_model(tmp_path, tiny_checkpoint, text_dir):
    from metric_search.results.reevaluate import reevaluate

    run = make_run(tmp_path / "r", [("mul(abs(W), X)", 20.0), ("abs(W)", 30.0), ("mul(abs(W), sqrt(X))", 25.0),
                                    ("neg(abs(W))", 90.0)],
                   config={"model": str(tiny_checkpoint), "data": f"text:{text_dir}", "nsamples": 2,
                           "calib_seqlen": 16})
    r = reevaluate(run, top=4, sequential=True, windows=2, seqlen=16)
    assert [x["rank"] for x in r["rows"]] == [1, 2, 3, 4] and all(x["perplexity"] > 1 for x in r["rows"])
    assert (r["protocol"]["device"], r["protocol"]["dtype"]) == ("cpu", "float32")
    half = reevaluate(run, top=2, sequential=False, windows=2, seqlen=16, dtype="bfloat16")
    assert half["protocol"]["dtype"] == "bfloat16" and all(x["perplexity"] > 1 for x in half["rows"])
    assert r["protocol"]["mode"] == "sequential" and r["protocol"]["perplexity"]["split"] == "test"
    fit, ppl = zip(*[(x["fitness"], x["perplexity"]) for x in r["rows"]])
    assert r["spearman_rho"] == pytest.approx(st.spearmanr(fit, ppl)[0], nan_ok=True)
    summary = analyze_run(run, plots=False, reevaluation=r)
    assert "## Re-evaluation under another protocol" in (run / "analysis" / "report.md").read_text()
    assert summary["reevaluation"]["dense_perplexity"] > 1


def test_relative_view_is_percent_vs_wanda_clipped_to_the_informative_range():
    from metric_search.results.report import relative_view

    s = {"baselines": [{"name": "pruner-zero", "fitness": 60.0}, {"name": "wanda", "fitness": 50.0}]}
    view = relative_view(s, [49.0, 50.0, 51.0, 5e9])
    assert view["name"] == "wanda" and view["pct"][:3] == pytest.approx([-2.0, 0.0, 2.0])
    assert view["high"] == pytest.approx(8.0) and view["above"] == 1 and view["clipped"][-1] == view["high"]
    assert relative_view({"baselines": []}, [1.0]) is None
    only_pz = relative_view({"baselines": [{"name": "pruner-zero", "fitness": 60.0}]}, [61.0])
    assert only_pz["name"] == "pruner-zero" and only_pz["high"] == 5.0
