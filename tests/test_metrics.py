"""The metric loader and SymbolicPruner: every kind of reference, bad references, prune --metric."""
import json

import pytest
import torch

from evaluators import Magnitude, SymbolicPruner, Wanda, prunable_linears
from evaluators.pruners import PrunerZero
from metric_search.cli import main
from metric_search.results.metrics import MetricError, hall_of_fame, load_metric, run_metric
from primitives import canonical_key, parse, rank_key, to_pz_json, to_string, tree_height, tree_size

HOF_COLUMNS = ["rank", "chosen", "complexity", "fitness", "test_perplexity", "expression", "canonical_key"]


def make_run(path, candidates, config=None, per_iteration=4):
    """A synthetic run directory: ``candidates`` are (expression, fitness or None for invalid[, status])."""
    from metric_search.store import csv_text

    path.mkdir(parents=True)
    cfg = {"name": path.name, "model": "tiny", "sparsity": 0.5, "structure": "unstructured", "data": "wikitext2",
           "nsamples": 4, "calib_seqlen": 32, "fitness_windows": 2, "fitness_seqlen": 32, "grad_norm": "l2",
           "seed": 0, "batch_size": 4, **(config or {})}
    (path / "config.json").write_text(json.dumps(cfg))
    records = []
    for i, (expression, fitness, *status) in enumerate(candidates):
        tree = parse(expression)
        status = status[0] if status else "ok" if fitness else "invalid"
        records.append({"iteration": i // per_iteration, "expression": to_string(tree),
                        "canonical_key": canonical_key(tree), "rank_key": rank_key(tree), "size": tree_size(tree),
                        "height": tree_height(tree), "fitness": fitness, "status": status,
                        "reason": "" if status == "ok" else "constant scores in model.layers.0.mlp.up_proj",
                        "mask_hash": f"h{i}" if fitness else None, "cached": "", "seconds": 0.1, "window_nll": [],
                        "worker": 1, "time": float(i)})
    (path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["fitness"])[:10]
    rows = [{"rank": i + 1, "chosen": "*" if i == 0 else "", "complexity": r["size"], "fitness": r["fitness"],
             "test_perplexity": r["fitness"] * 0.9 if i < 2 else "", "expression": r["expression"],
             "canonical_key": r["canonical_key"]} for i, r in enumerate(ok)]
    (path / "hall_of_fame.csv").write_text(csv_text(rows, HOF_COLUMNS))
    iters = sorted({r["iteration"] for r in records})
    log = [{"iteration": i, "best_fitness": ok[0]["fitness"], "median_fitness": ok[len(ok) // 2]["fitness"]}
           for i in iters]
    (path / "logbook.csv").write_text(csv_text(log, ["iteration", "best_fitness", "median_fitness"]))
    return path


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "demo", [("mul(abs(W), X)", 20.0), ("abs(W)", 40.0), ("sub(W, W)", None),
                                        ("mul(abs(mul(W, W)), mms(G))", 30.0), ("div(W, X)", 50.0)],
                    config={"grad_norm": "l1"})


def test_symbolic_pruner_scores_like_the_baselines():
    torch.manual_seed(0)
    W, X, G = torch.randn(8, 16), torch.rand(1, 16), torch.rand(8, 16)
    wanda = SymbolicPruner("mul(abs(W), X)")
    assert wanda.needs == ("X",) and wanda.name == "mul(abs(W), X)"
    assert torch.equal(wanda.score(W, {"X": X, "G": G}), Wanda().score(W, {"X": X}))
    pz = SymbolicPruner("mul(abs(mul(W, W)), mms(G))")
    assert pz.needs == ("G",)
    assert torch.allclose(pz.score(W, {"G": G}), PrunerZero().score(W, {"G": G}))
    assert SymbolicPruner("abs(W) * X + G").needs == ("X", "G")  # infix works too
    assert SymbolicPruner("X").score(W, {"X": X}).shape == W.shape  # (1, in) is broadcast to the weight
    with pytest.raises(ValueError, match="statistics G missing"):
        pz.score(W, {"X": X})
    described = wanda.describe()
    assert described["kind"] == "symbolic" and described["rank_key"] == "X*Abs(W)"


def test_load_every_kind_of_reference(run, tmp_path):
    from metric_search.results.export import export_metric

    best = load_metric(f"{run}:best")
    assert isinstance(best, SymbolicPruner) and best.expression == "mul(abs(W), X)"
    assert best.grad_norm == "l1"  # the G definition the run was searched with
    assert best.info["fitness"] == 20.0 and best.source == f"{run}:best"
    assert load_metric(str(run)).expression == best.expression  # a bare run directory means :best
    assert load_metric(f"{run}:3").expression == "abs(W)"  # rank 3 (the invalid candidate is not ranked)
    assert load_metric(f"{run}:1", grad_norm="l2").grad_norm == "l2"  # an explicit choice wins
    assert run_metric(run, 2)["test_perplexity"] == pytest.approx(27.0)

    files = export_metric("mul(sqrt(abs(W)), G)", tmp_path / "out", "m", ["json", "pz-json"])["files"]
    assert load_metric(files["json"]).expression == "mul(sqrt(abs(W)), G)"
    assert load_metric(str(files["pz-json"])).expression == "mul(sqrt(abs(W)), G)"
    # Pruner-Zero's own file: their "div" is x/‖y‖_F (our divnorm)
    (tmp_path / "pz.json").write_text(json.dumps({"data": "div", "left": {"data": "W"}, "right": {"data": "G"}}))
    assert load_metric(tmp_path / "pz.json").expression == "divnorm(W, G)"
    native = export_metric("div(W, X)", tmp_path / "out", "d", ["pz-json"])["files"]["pz-json"]
    assert native.name == "d.tree.json" and load_metric(native).expression == "div(W, X)"

    assert load_metric("mul(abs(W), X)").expression == "mul(abs(W), X)"
    assert load_metric("abs(W) * X").expression == "mul(abs(W), X)"
    assert isinstance(load_metric("wanda"), Wanda) and isinstance(load_metric("magnitude"), Magnitude)
    besa = load_metric("besa", score=load_metric(f"{run}:best"))
    assert besa.ranking.expression == "mul(abs(W), X)"
    pruner = Wanda()
    assert load_metric(pruner) is pruner
    assert load_metric(parse("abs(W)")).expression == "abs(W)"


def test_hall_of_fame_falls_back_to_evaluations(run):
    (run / "hall_of_fame.csv").unlink()
    rows = hall_of_fame(run)
    assert [r["expression"] for r in rows] == ["mul(abs(W), X)", "mul(abs(mul(W, W)), mms(G))", "abs(W)", "div(W, X)"]


@pytest.mark.parametrize("ref,needle", [
    ("runs/missing:best", "no run directory runs/missing"),
    ("{run}:9", "index 9 is out of range; the hall of fame has 4 entries"),
    ("{run}:0", "bad metric index '0'"),
    ("{run}:top", "bad metric index 'top'"),
    ("mul(abs(W), ", "cannot use metric"),
    ("mul(abs(W), Q)", "cannot use metric"),
    ("nothing/here.json", "no metric file or run directory"),
    ("{tmp}/bad.json", "is not valid JSON"),
    ("{tmp}/other.json", "neither a metric-search export"),
    ("", "empty metric reference"),
])
def test_bad_references_raise_one_line(run, tmp_path, ref, needle):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"x": 1}')
    with pytest.raises(MetricError, match=needle) as err:
        load_metric(ref.format(run=run, tmp=tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("flag,ref", [("--metric", "runs/missing:best"), ("--metric", "{run}:99"),
                                      ("--metric", "mul(abs(W),"), ("--score", "{run}:nope")])
def test_cli_bad_reference_exit_2(run, tmp_path, capsys, flag, ref):
    out = tmp_path / "never"
    extra = ["--method", "besa"] if flag == "--score" else []
    code = main(["prune", "--model", str(tmp_path / "no-model"), flag, ref.format(run=run), *extra,
                 "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("metric-search prune: error:") and err.count("\n") == 1
    assert not out.exists()


def test_method_and_metric_are_exclusive(run, tmp_path, capsys):
    assert main(["prune", "--method", "wanda", "--metric", f"{run}:best", "--output", str(tmp_path / "o")]) == 2
    assert "either --method or --metric" in capsys.readouterr().err


def test_prune_with_a_run_metric_equals_the_baseline(run, tiny_checkpoint, text_dir, tmp_path, capsys):
    """runs/<id>:best is Wanda's expression here: its checkpoint must equal the Wanda baseline's, bit for bit."""
    from transformers import AutoModelForCausalLM

    common = ["--model", str(tiny_checkpoint), "--calib-data", f"text:{text_dir}", "--nsamples", "2",
              "--calib-seqlen", "16", "--grad-norm", "l2"]
    assert main(["prune", *common, "--metric", f"{run}:best", "--output", str(tmp_path / "metric")]) == 0
    assert main(["prune", *common, "--output", str(tmp_path / "wanda")]) == 0  # --method keeps its default
    assert "achieved sparsity" in capsys.readouterr().out
    recipe = json.loads((tmp_path / "metric" / "pruning.json").read_text())
    assert recipe["pruner"]["expression"] == "mul(abs(W), X)" and recipe["pruner"]["source"] == f"{run}:best"
    assert json.loads((tmp_path / "wanda" / "pruning.json").read_text())["method"] == "wanda"
    a = prunable_linears(AutoModelForCausalLM.from_pretrained(tmp_path / "metric"))
    b = prunable_linears(AutoModelForCausalLM.from_pretrained(tmp_path / "wanda"))
    assert all(torch.equal(a[name].weight, b[name].weight) for name in a)
    assert (a[next(iter(a))].weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_python_api_prune(run, tiny_model, tokenizer, text_dir):
    from evaluators import Calibration, calibration_windows, parse_structure

    windows, spec = calibration_windows(tokenizer, f"text:{text_dir}", 2, 16, 0)
    report = load_metric(f"{run}:best").prune(tiny_model, Calibration(windows, spec.describe(), use_cache=False),
                                              sparsity=0.5, structure=parse_structure("2:4"), progress=False)
    assert report.method == "mul(abs(W), X)" and report.overall_sparsity == pytest.approx(0.5)


def test_pz_json_of_the_published_metric():
    tree = parse("mul(abs(mul(W, W)), mms(G))")
    assert to_pz_json(tree) == {"data": "mul",
                                "left": {"data": "abs", "left": {"data": "mul", "left": {"data": "W"},
                                                                 "right": {"data": "W"}}},
                                "right": {"data": "mms", "left": {"data": "G"}}}
