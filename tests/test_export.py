"""Every export format round-trips; the standalone .py equals the engine bit for bit, imported alone."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from metric_search.cli import main
from metric_search.results.export import FORMATS, export_metric, export_run, parse_formats, read_sympy
from metric_search.results.metrics import MetricError, load_metric
from primitives import compile_tree, from_pz_json, from_sympy, parse, rank_key, to_latex, to_string
from test_metrics import make_run

# Every built-in operator, constants, bare leaves, and guards that act (log 0, div by 0, exp overflow).
EXPRESSIONS = [
    "mul(abs(W), X)", "mul(abs(mul(W, W)), mms(G))", "add(mul(abs(W), X), mul(abs(W), G))", "W", "X",
    "add(mms(mul(abs(W), X)), div(sqrt(G), 2.5))", "zsn(sub(log(W), exp(G)))", "normalize(mul(sigmoid(W), tanh(X)))",
    "divnorm(sqr(W), G)", "div(neg(W), sub(X, X))", "sub(exp(mul(W, 100.0)), exp(W))", "log(sub(W, W))",
    "zsn(2.0)", "mms(X)", "div(3, add(G, neg(G)))", "sqr(sqr(sqr(mul(W, 1e10))))",
    "mul(add(rowrel(abs(W)), colrel(abs(W))), sqrt(X))", "rowrel(colrel(mul(W, 3e38)))", "colrel(X)",
]


def leaf_tensors():
    """Random leaves with exact zeros, negatives and a zero row/column (where the guards act)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 10, generator=g)
    W[0, :4] = 0
    W[1] = -W[1].abs()
    X = torch.rand(1, 10, generator=g)
    X[0, 3] = 0
    G = torch.rand(6, 10, generator=g)
    G[2] = 0
    return {"W": W, "X": X, "G": G}


RUNNER = textwrap.dedent("""
    import importlib.abc, importlib.util, sys
    class Block(importlib.abc.MetaPathFinder):  # prove the files need nothing from this project
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("primitives", "evaluators", "metric_search", "deap"):
                raise ImportError(f"standalone file imported {name}")
    sys.meta_path.insert(0, Block())
    import torch
    leaves = torch.load(sys.argv[1])
    out = {}
    for i, path in enumerate(sys.argv[3:]):
        spec = importlib.util.spec_from_file_location(f"exported_{i}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for dtype in (torch.float32, torch.float64):
            out[(path, str(dtype))] = module.score(**{k: v.to(dtype) for k, v in leaves.items()})
        out[(path, "stats")] = module.score_from_stats(leaves["W"], {"X": leaves["X"], "G": leaves["G"]})
    torch.save(out, sys.argv[2])
""")


def test_standalone_py_equals_compiled_tree_in_a_clean_process(tmp_path):
    leaves = leaf_tensors()
    paths = [export_metric(e, tmp_path, f"m{i}", ["py"])["files"]["py"] for i, e in enumerate(EXPRESSIONS)]
    torch.save(leaves, tmp_path / "leaves.pt")
    (tmp_path / "runner.py").write_text(RUNNER)
    # -I: isolated mode, neither the working directory nor PYTHON* variables put the project on the path
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "runner.py"), str(tmp_path / "leaves.pt"),
                           str(tmp_path / "out.pt"), *map(str, paths)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = torch.load(tmp_path / "out.pt")
    for expression, path in zip(EXPRESSIONS, paths):
        for dtype in (torch.float32, torch.float64):
            want = compile_tree(parse(expression))(**{k: v.to(dtype) for k, v in leaves.items()})
            got = out[(str(path), str(dtype))]
            assert got.dtype == want.dtype and got.shape == want.shape == (6, 10), expression
            assert torch.equal(got, want), expression  # bit for bit: same guards, same EPS, same order
            assert torch.isfinite(got).all()
        assert torch.equal(out[(str(path), "stats")], compile_tree(parse(expression))(**leaves))


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_every_format_round_trips(tmp_path, expression):
    import sympy as sp

    tree = parse(expression)
    files = export_metric(tree, tmp_path, "m", FORMATS)["files"]
    assert set(files) == set(FORMATS)
    record = json.loads(files["json"].read_text())
    assert record["expression"] == to_string(tree) and record["rank_key"] == rank_key(tree)
    assert record["files"]["pz-json"] == files["pz-json"].name
    assert load_metric(files["json"]).expression == to_string(tree)  # our JSON
    assert rank_key(from_sympy(read_sympy(files["sympy"].read_text()))) == rank_key(tree)  # SymPy
    dialect = "native" if files["pz-json"].name.endswith(".tree.json") else "pruner-zero"
    assert dialect == ("native" if "div(" in expression.replace("divnorm(", "") else "pruner-zero")
    back = from_pz_json(files["pz-json"].read_text(), dialect=dialect)  # Pruner-Zero JSON (or our native tree)
    assert to_string(back) == to_string(tree) and rank_key(back) == rank_key(tree)
    tex = files["latex"].read_text().splitlines()  # LaTeX: the tree's rendering and the simplified SymPy one
    assert to_latex(tree) in tex and f"% {sp.latex(read_sympy(files['sympy'].read_text()))}" in tex


def test_export_run_writes_into_metrics(tmp_path):
    run = make_run(tmp_path / "demo", [("mul(abs(W), X)", 20.0), ("abs(W)", 40.0), ("div(W, X)", 30.0)])
    result = export_run(run)
    assert sorted(p.name for p in (run / "metrics").iterdir()) == [
        "best.json", "best.py", "best.pz.json", "best.sympy.txt", "best.tex"]
    record = json.loads((run / "metrics" / "best.json").read_text())
    assert record["fitness"] == 20.0 and record["run_id"] == "demo" and record["rank"] == 1
    assert record["protocol"]["fitness"]["windows"] == 2 and record["protocol"]["calibration"]["nsamples"] == 4
    assert result["best"]["expression"] == "mul(abs(W), X)"
    export_run(run, "all", "json,py")
    assert (run / "metrics" / "rank2.py").is_file() and (run / "metrics" / "rank3.json").is_file()
    assert export_run(run, 2, ["pz-json"])["rank2"]["files"]["pz-json"].name == "rank2.tree.json"


def test_export_cli(tmp_path, capsys):
    run = make_run(tmp_path / "demo", [("mul(abs(W), X)", 20.0), ("abs(W)", 40.0)])
    assert main(["export", str(run), "--index", "2", "--format", "py,latex"]) == 0
    assert "rank2.py" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "metrics").iterdir()) == ["rank2.py", "rank2.tex"]
    for args, needle in ((["--index", "3"], "out of range"), (["--format", "json,bogus"], "unknown export format"),
                         (["--index", "first"], "bad metric index")):
        assert main(["export", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_parse_formats():
    assert parse_formats("all") == FORMATS
    assert parse_formats("tex, python,pz") == ("latex", "py", "pz-json")
    with pytest.raises(MetricError):
        parse_formats("yaml")
