import pytest
import torch

from evaluators import GBLM, Magnitude, PrunerZero, ScoreFunction, Wanda, get_pruner, prunable_linears

W = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.0, 4.0]])
X = torch.tensor([[2.0, 1.0, 0.5]])
G = torch.tensor([[0.1, 0.2, 0.0], [0.4, 0.3, 0.2]])
STATS = {"X": X, "G": G}


def test_magnitude():
    assert torch.equal(Magnitude().score(W, STATS), torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]]))


def test_wanda():
    expected = torch.tensor([[2.0, 2.0, 1.5], [1.0, 0.0, 2.0]])
    assert torch.allclose(Wanda().score(W, STATS), expected)


def test_gblm_l1_and_l2_share_formula():
    expected = torch.tensor([[2.0 + 0.1, 2.0 + 0.4, 1.5 + 0.0], [1.0 + 0.2, 0.0, 2.0 + 0.8]])
    assert torch.allclose(GBLM(alpha=1.0).score(W, STATS), expected)
    assert GBLM(grad_norm="l1").grad_norm == "l1"
    assert torch.allclose(GBLM(alpha=0.0).score(W, STATS), Wanda().score(W, STATS))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_gblm_default_is_the_reference_scale(norm):
    """The reference (gradient_computation.py, --scale 100) accumulates (100·g)² or |100·g| per window and
    scores |W|·sqrt(scaler_row) + |W|·G_ref; ours keeps G = sqrt(Σ g²) (Σ|g|) and weights it by α = 100."""
    grads = [torch.tensor([[0.01, -0.02, 0.0], [0.03, 0.0, -0.01]]), torch.tensor([[0.02, 0.01, 0.0], [-0.01, 0.0, 0.02]])]
    if norm == "l2":
        ours = torch.sqrt(sum(g * g for g in grads))
        reference = torch.sqrt(sum(torch.abs((g * 100) ** 2) for g in grads))
    else:
        ours = sum(g.abs() for g in grads)
        reference = sum(torch.abs(g * 100) for g in grads)
    by_hand = W.abs() * X + W.abs() * reference.abs()
    assert torch.allclose(GBLM(grad_norm=norm).score(W, {"X": X, "G": ours}), by_hand, rtol=1e-5)
    assert GBLM().alpha == 100.0 and get_pruner("gblm", alpha=1.0).alpha == 1.0


def test_gblm_rejects_negative_alpha():
    with pytest.raises(ValueError, match="alpha"):
        GBLM(alpha=-1.0)


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_magnitude_compares_over_the_layer_by_default(tiny_model, sparsity):
    Magnitude().prune(tiny_model, sparsity=sparsity, progress=False)
    for name, linear in prunable_linears(tiny_model).items():
        zeros = int((linear.weight == 0).sum())
        assert zeros == int(linear.weight.numel() * sparsity), name  # exactly floor(numel·s) per layer
    rows = [(linear.weight == 0).sum(1) for linear in prunable_linears(tiny_model).values()]
    assert any(r.min() != r.max() for r in rows)  # a layer-wide threshold prunes rows unevenly


def test_magnitude_per_row_option(tiny_model):
    pruner = get_pruner("magnitude", group="row")
    assert pruner.describe()["group"] == "row"
    pruner.prune(tiny_model, sparsity=0.5, progress=False)
    for linear in prunable_linears(tiny_model).values():
        assert torch.equal((linear.weight == 0).sum(1), torch.full((linear.weight.shape[0],), linear.weight.shape[1] // 2))
    with pytest.raises(ValueError, match="group"):
        Magnitude(group="column")


def test_pruner_zero_uses_whole_matrix_min_max():
    mms = (G - 0.0) / (0.4 - 0.0)
    assert torch.allclose(PrunerZero().score(W, STATS), W * W * mms)
    constant = {"G": torch.ones_like(G)}
    assert torch.equal(PrunerZero().score(W, constant), torch.zeros_like(W))


def test_score_function_and_registry():
    pruner = ScoreFunction(fn=lambda w, s: w.abs() * s["G"], name="wg", needs=("G",))
    assert torch.allclose(pruner.score(W, STATS), W.abs() * G)
    assert get_pruner("gblm", grad_norm="l1").describe()["grad_norm"] == "l1"
    assert [get_pruner(n).needs for n in ("magnitude", "wanda", "pruner-zero")] == [(), ("X",), ("G",)]
