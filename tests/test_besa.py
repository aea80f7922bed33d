import pytest
import torch

from evaluators import (BESA, Calibration, MaskError, Magnitude, ScoreFunction, Wanda, get_pruner, parse_structure,
                        prunable_linears)
from evaluators.besa import candidate_rates, project_counts, row_ranks

CAL = lambda: Calibration(torch.randint(3, 104, (4, 16), generator=torch.Generator().manual_seed(2)),
                          {"source": "random"})


def block_sparsity(model, block: int) -> float:
    linears = [l for n, l in prunable_linears(model).items() if f".layers.{block}." in n]
    return sum((l.weight == 0).sum().item() for l in linears) / sum(l.weight.numel() for l in linears)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_meets_block_target_and_allocates_different_rates(tiny_model, target):
    report = get_pruner("besa", score=None, grad_norm="l2", ro=False).prune(
        tiny_model, CAL(), target, parse_structure(None), progress=False)
    assert report.method == "besa" and report.overall_sparsity == pytest.approx(target, abs=0.005)
    for block in (0, 1):
        assert block_sparsity(tiny_model, block) == pytest.approx(target, abs=0.005)
        rates = [v for n, v in report.layer_sparsity.items() if f".layers.{block}." in n]
        assert max(rates) - min(rates) > 0.01, rates  # a learned allocation, not a uniform one
        learned = report.statistics["blocks"][f"model.layers.{block}"]["learned_rates"]
        assert len(set(learned.values())) > 1


def test_weights_are_frozen_and_pruned_by_the_ranking(tiny_model):
    dense = {n: l.weight.detach().clone() for n, l in prunable_linears(tiny_model).items()}
    BESA(score=Magnitude(), epochs=1).prune(tiny_model, CAL(), 0.5, parse_structure(None), progress=False)
    for name, linear in prunable_linears(tiny_model).items():
        W, pruned = linear.weight, linear.weight == 0
        assert torch.equal(W, dense[name].masked_fill(pruned, 0))  # no weight was updated
        # within every row, each pruned weight scores no higher than any kept one (magnitude ranking)
        mags = dense[name].abs()
        lowest_kept = mags.masked_fill(pruned, float("inf")).min(1).values
        highest_pruned = mags.masked_fill(~pruned, -1.0).max(1).values
        assert (highest_pruned <= lowest_kept).all()


def test_any_score_and_per_row_allocation(tiny_model):
    metric = ScoreFunction(fn=lambda w, s: w.abs() * s["X"] ** 2, name="discovered", needs=("X",))
    pruner = BESA(score=metric, per_row=True, epochs=2, lr=0.2)
    assert pruner.name == "besa (discovered)" and pruner.needs == ("X", "Y")
    report = pruner.prune(tiny_model, CAL(), 0.5, parse_structure(None), progress=False)
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.005)
    q = prunable_linears(tiny_model)["model.layers.0.mlp.gate_proj"].weight
    assert len(set((q == 0).sum(1).tolist())) > 1  # rows of one layer got different rates


def test_nm_structure_is_refused(tiny_model):
    with pytest.raises(MaskError, match="unstructured"):
        BESA().prune(tiny_model, CAL(), 0.5, parse_structure("2:4"), progress=False)


def test_project_counts_is_exact_and_keeps_order():
    rates = [torch.full((4,), 0.3), torch.full((8,), 0.6), torch.tensor([0.1, 0.9])]
    widths = [10, 7, 33]
    for target in (0.2, 0.5, 0.8):
        counts = project_counts(rates, widths, target)
        total = sum(r.numel() * w for r, w in zip(rates, widths))
        assert sum(int(c.sum()) for c in counts) == round(target * total)
        assert all(((c >= 0) & (c <= w)).all() for c, w in zip(counts, widths))
        assert counts[2][0] <= counts[2][1]


def test_straight_through_mask_is_hard_forward_soft_backward():
    scores = torch.rand(3, 20, generator=torch.Generator().manual_seed(0))
    d = candidate_rates(0.05)
    layer = {"ranks": row_ranks(scores), "logits": torch.randn(1, len(d), requires_grad=True),
             "below": (torch.arange(20).unsqueeze(0) < (d * 20).floor().unsqueeze(1)).float()}
    rate, mask = BESA._soft_mask(layer, d)
    k = int((rate.item() * 20) // 1)
    assert torch.allclose(mask.detach(), (layer["ranks"] >= k).float(), atol=1e-6)  # 1 + p − p rounds
    assert (mask.detach()[layer["ranks"] < k] == 0).all()  # pruned weights are exactly zero
    (mask * torch.arange(20.0)).sum().backward()
    assert layer["logits"].grad.abs().sum() > 0


def test_wanda_is_the_default_ranking():
    default, explicit = get_pruner("besa"), get_pruner("besa", score=Magnitude())
    assert isinstance(default.ranking, Wanda) and default.name == "besa" and default.needs == ("X", "Y")
    assert explicit.name == "besa (magnitude)" and explicit.needs == ("Y",)
    W, X = torch.rand(3, 8), torch.rand(1, 8)
    assert torch.equal(default.score(W, {"X": X}), Wanda().score(W, {"X": X}))
