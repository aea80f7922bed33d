import pytest
import torch

from evaluators import Calibration, GBLM, Magnitude, PrunerZero, ScoreError, ScoreFunction, Wanda, parse_structure
from evaluators import prunable_linears
from evaluators.stats import activation_norms

CAL = lambda: Calibration(torch.randint(3, 104, (4, 16), generator=torch.Generator().manual_seed(2)),
                          {"source": "random"})


@pytest.mark.parametrize("pruner", [Magnitude(), Wanda(), GBLM(), PrunerZero()], ids=lambda p: p.name)
@pytest.mark.parametrize("structure", [None, "2:4", "4:8"])
@pytest.mark.parametrize("sequential", [False, True])
def test_exact_sparsity(tiny_model, pruner, structure, sequential):
    report = pruner.prune(tiny_model, CAL(), 0.5, parse_structure(structure), sequential, progress=False)
    assert report.overall_sparsity == pytest.approx(0.5)
    for name, linear in prunable_linears(tiny_model).items():
        assert report.layer_sparsity[name] == pytest.approx(0.5)
        assert (linear.weight == 0).float().mean().item() == pytest.approx(0.5)
    assert tiny_model.lm_head.weight.ne(0).all()


def test_one_shot_wanda_equals_manual_masks(tiny_model):
    cal = CAL()
    dense = {n: l.weight.detach().clone() for n, l in prunable_linears(tiny_model).items()}
    xs = activation_norms(tiny_model, cal.windows, progress=False)
    Wanda().prune(tiny_model, cal, 0.25, parse_structure(None), progress=False)
    for name, linear in prunable_linears(tiny_model).items():
        scores = dense[name].abs() * xs[name]
        k = int(scores.shape[1] * 0.25)
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        expected = dense[name].scatter(1, order, 0.0)
        assert torch.equal(linear.weight, expected)


def test_sequential_measures_x_on_pruned_inputs(tiny_model):
    import copy
    cal = CAL()
    other = copy.deepcopy(tiny_model)
    Wanda().prune(tiny_model, cal, 0.5, parse_structure(None), sequential=False, progress=False)
    Wanda().prune(other, cal, 0.5, parse_structure(None), sequential=True, progress=False)
    block0 = [n for n in prunable_linears(tiny_model) if ".layers.0." in n]
    later = [n for n in prunable_linears(tiny_model) if ".layers.1." in n]
    one, seq = prunable_linears(tiny_model), prunable_linears(other)
    assert all(torch.equal(one[n].weight, seq[n].weight) for n in block0)  # same inputs to block 0
    assert any(not torch.equal(one[n].weight, seq[n].weight) for n in later)


def test_non_finite_scores_raise(tiny_model):
    bad = ScoreFunction(fn=lambda w, s: w / 0.0, name="inf")
    with pytest.raises(ScoreError, match="non-finite"):
        bad.prune(tiny_model, None, 0.5, parse_structure(None), progress=False)


def test_row_broadcast_scores_are_accepted(tiny_model):
    only_x = ScoreFunction(fn=lambda w, s: s["X"], name="x", needs=("X",))
    report = only_x.prune(tiny_model, CAL(), 0.5, parse_structure(None), progress=False)
    assert report.overall_sparsity == pytest.approx(0.5)


def test_needs_calibration(tiny_model):
    with pytest.raises(ValueError, match="needs calibration"):
        Wanda().prune(tiny_model, None, 0.5, parse_structure(None), progress=False)
