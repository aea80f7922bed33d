"""RIA (relative importance and activations) as a baseline pruner, its search primitives rowrel/colrel, and
the seed metric ``ria`` that writes RIA's score with them."""
import copy
import json

import pytest
import sympy as sp
import torch

import primitives as P
from evaluators import RIA, Calibration, SymbolicPruner, get_pruner, parse_structure, prunable_linears
from evaluators.methods import MethodError
from metric_search.cli import main
from metric_search.toolbox import KNOWN_METRICS

# |W| = [[1, 2, 1], [3, 2, 0]]: row sums 4, 5; column sums 4, 4, 1. sqrt(X) = [2, 1, 3].
W = torch.tensor([[1.0, -2.0, 1.0], [3.0, 2.0, 0.0]])
X = torch.tensor([[4.0, 1.0, 9.0]])
ROWREL = torch.tensor([[1 / 4, 2 / 4, 1 / 4], [3 / 5, 2 / 5, 0.0]])
COLREL = torch.tensor([[1 / 4, 2 / 4, 1 / 1], [3 / 4, 2 / 4, 0 / 1]])
RI = torch.tensor([[0.5, 1.0, 1.25], [1.35, 0.9, 0.0]])  # ROWREL + COLREL
CAL = lambda: Calibration(torch.randint(3, 104, (4, 16), generator=torch.Generator().manual_seed(2)),
                          {"source": "random"})


def test_ria_score_by_hand():
    assert torch.allclose(P.OPERATORS["rowrel"].torch_fn(W.abs()), ROWREL)
    assert torch.allclose(P.OPERATORS["colrel"].torch_fn(W.abs()), COLREL)
    assert torch.allclose(RIA().score(W, {"X": X}), torch.tensor([[1.0, 1.0, 3.75], [2.7, 0.9, 0.0]]))
    assert torch.allclose(RIA(a=1.0).score(W, {"X": X}), torch.tensor([[2.0, 1.0, 11.25], [5.4, 0.9, 0.0]]))
    assert torch.allclose(RIA(a=0).score(W, {"X": X}), RI)  # relative importance alone
    assert RIA().describe() == {"name": "ria", "needs": ["X"], "a": 0.5, "group": "layer"}


def test_ria_options():
    assert get_pruner("ria", a=1.5, group="row").describe()["a"] == 1.5
    assert get_pruner("ria", a=None).a == 0.5
    with pytest.raises(MethodError, match="a must be"):
        get_pruner("ria", a=-1.0)
    with pytest.raises(ValueError, match="group"):
        RIA(group="column")


def test_rowrel_colrel_are_total():
    f32 = torch.finfo(torch.float32).max
    cases = [torch.zeros(3, 4), torch.full((3, 4), -2.5), torch.full((3, 4), 3.4e38),
             torch.tensor([[0.0, 0.0, 0.0], [1e-45, -1e-45, 0.0], [3.4e38, -3.4e38, 3.4e38], [1.0, 2.0, 0.0]]),
             torch.tensor([[f32, 1e-30], [-f32, 1e30]]), torch.tensor([5.0, -5.0, 0.0]), torch.tensor(7.0)]
    for op in ("rowrel", "colrel"):
        fn = P.OPERATORS[op].torch_fn
        for x in cases + [c.double() for c in cases]:
            y = fn(x)
            assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all(), (op, x)
            assert y.abs().max() <= 1, (op, x)
    rowrel, colrel = P.OPERATORS["rowrel"].torch_fn, P.OPERATORS["colrel"].torch_fn
    assert torch.equal(rowrel(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert torch.equal(rowrel(torch.full((2, 4), -3.0)), torch.full((2, 4), -0.25))  # constant → sign / in
    assert torch.equal(colrel(torch.full((2, 4), 3.4e38)), torch.full((2, 4), 0.5))  # rescaled, no overflow
    huge = rowrel(torch.tensor([[3.4e38, 3.4e38, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(huge, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(rowrel(torch.tensor([[1e-40, 3e-40]])), torch.tensor([[0.25, 0.75]]))


def test_x_is_broadcast_before_rowrel_and_colrel():
    # X (1, in) acts as the (out, in) matrix whose rows are all X: rowrel(X) = X / Σ_j X_j on every row,
    # colrel(X) = X_j / (out · X_j) = 1/out (0 where X_j = 0)
    X0 = torch.tensor([[1.0, 0.0, 3.0]])
    assert torch.allclose(P.compile_tree("rowrel(X)")(W=W, X=X0), torch.tensor([[0.25, 0.0, 0.75]] * 2))
    assert torch.allclose(P.compile_tree("colrel(X)")(W=W, X=X0), torch.tensor([[0.5, 0.0, 0.5]] * 2))


def test_keys_and_round_trips():
    assert P.rank_key("rowrel(mul(abs(W), X))") == P.rank_key("mul(abs(W), X)")  # a positive scaling per row
    assert P.rank_key("colrel(mul(abs(W), X))") != P.rank_key("mul(abs(W), X)")  # changes the order in a row
    assert P.canonical_key("rowrel(mul(3, W))") == P.canonical_key("rowrel(W)") == "rowrel(W)"
    assert P.canonical_key("colrel(neg(W))") == "-colrel(W)"
    assert P.canonical_key("rowrel(rowrel(W))") == "rowrel(W)"
    assert P.canonical_key("rowrel(divnorm(W, G))") == "rowrel(W)"
    assert P.rank_key("rowrel(3)") == "0" and P.canonical_key("colrel(neg(2))") == "-colrel(1)"  # 1/out
    assert P.to_string(P.simplify_tree("abs(rowrel(abs(W)))")) == "rowrel(abs(W))"  # preserves_nonneg
    for expr in ("rowrel(W)", "colrel(sub(W, X))", KNOWN_METRICS["ria"], "mul(rowrel(G), colrel(abs(W)))"):
        tree = P.parse(expr)
        twin = P.to_sympy(tree)
        assert isinstance(twin, sp.Expr)
        back = P.from_sympy(twin)
        assert P.canonical_key(back) == P.canonical_key(tree) and P.rank_key(back) == P.rank_key(tree), expr
        assert P.canonical_key(P.read_expression(P.canonical_key(tree))) == P.canonical_key(tree), expr
        native = P.to_pz_json(tree, dialect="native")
        assert P.to_string(P.from_pz_json(json.dumps(native), dialect="native")) == P.to_string(tree)
    assert "increasing_in_row" in P.OPERATORS["rowrel"].properties
    assert not P.OPERATORS["colrel"].increasing_in_row and not P.OPERATORS["rowrel"].increasing


def test_seed_metric_gives_exactly_ria_scores():
    fn = P.compile_tree(KNOWN_METRICS["ria"])
    g = torch.Generator().manual_seed(0)
    for out, inn in ((2, 3), (16, 24), (64, 48)):
        Wr = torch.randn(out, inn, generator=g)
        Wr[0], Wr[:, 1] = 0.0, 0.0  # a zero row and a zero column
        Xr = torch.rand(1, inn, generator=g) * 3
        Xr[0, 2] = 0.0
        expected = RIA().score(Wr, {"X": Xr})
        assert torch.equal(fn(W=Wr, X=Xr), expected)
        assert torch.equal(SymbolicPruner(KNOWN_METRICS["ria"]).score(Wr, {"X": Xr}), expected)
        assert torch.isfinite(expected).all()


@pytest.mark.parametrize("sequential", [False, True])
def test_seed_metric_prunes_like_ria_per_row(tiny_model, sequential):
    other = copy.deepcopy(tiny_model)
    RIA(group="row").prune(tiny_model, CAL(), 0.5, parse_structure(None), sequential, progress=False)
    SymbolicPruner(KNOWN_METRICS["ria"]).prune(other, CAL(), 0.5, parse_structure(None), sequential, progress=False)
    for (name, a), b in zip(prunable_linears(tiny_model).items(), prunable_linears(other).values()):
        assert torch.equal(a.weight, b.weight), name


def test_ria_masks(tiny_model):
    assert torch.equal(P.OPERATORS["rowrel"].torch_fn(W.abs()) + P.OPERATORS["colrel"].torch_fn(W.abs()),
                       RIA(a=0).score(W, {"X": X}))
    model = copy.deepcopy(tiny_model)
    RIA().prune(model, CAL(), 0.5, parse_structure(None), progress=False)
    rows = []
    for name, linear in prunable_linears(model).items():
        zeros = linear.weight == 0
        assert int(zeros.sum()) == int(linear.weight.numel() * 0.5), name  # floor(numel·s) over the layer
        rows.append(zeros.sum(1))
    assert any(r.min() != r.max() for r in rows)
    RIA().prune(tiny_model, CAL(), 0.5, parse_structure("2:4"), True, progress=False)
    for name, linear in prunable_linears(tiny_model).items():
        groups = (linear.weight == 0).reshape(linear.weight.shape[0], -1, 4).sum(-1)
        assert torch.equal(groups, torch.full_like(groups, 2)), name


def test_cli_prune_with_ria(tiny_checkpoint, text_dir, tmp_path, capsys):
    out = tmp_path / "ria"
    args = ["prune", "--model", str(tiny_checkpoint), "--output", str(out), "--calib-data", f"text:{text_dir}",
            "--nsamples", "4", "--calib-seqlen", "32", "--method", "ria"]
    assert main(args + ["--ria-a", "1", "--ria-group", "row"]) == 0
    recipe = json.loads((out / "pruning.json").read_text())
    assert recipe["method"] == "ria" and recipe["pruner"] == {"name": "ria", "needs": ["X"], "a": 1.0, "group": "row"}
    assert recipe["overall_sparsity"] == pytest.approx(0.5, abs=0.03)
    assert main(args[:4] + [str(tmp_path / "ria24")] + args[5:] + ["--structure", "2:4", "--sequential"]) == 0
    assert json.loads((tmp_path / "ria24" / "pruning.json").read_text())["pruner"]["group"] == "layer"
    capsys.readouterr()
    assert main(args[:4] + [str(tmp_path / "bad")] + args[5:] + ["--ria-a", "-1"]) == 2
    err = capsys.readouterr().err
    assert "a must be" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
