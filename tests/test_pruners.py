import torch

from evaluators import GBLM, Magnitude, PrunerZero, ScoreFunction, Wanda, get_pruner

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
    assert torch.allclose(GBLM().score(W, STATS), expected)
    assert GBLM(grad_norm="l1").grad_norm == "l1"
    assert torch.allclose(GBLM(alpha=0.0).score(W, STATS), Wanda().score(W, STATS))


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
