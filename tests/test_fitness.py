import math

import pytest
import torch

from evaluators import Calibration, Wanda, compute_statistics, parse_structure, perplexity, prunable_linears
from evaluators.fitness import FitnessEvaluator, InvalidScore
from evaluators.masks import make_mask


@pytest.fixture
def evaluator(tiny_model):
    gen = torch.Generator().manual_seed(5)
    cal = torch.randint(3, 104, (4, 16), generator=gen)
    stats, _ = compute_statistics(tiny_model, cal, {"source": "random"}, ("X", "G"), progress=False)
    windows = torch.randint(3, 104, (3, 16), generator=gen)
    ev = FitnessEvaluator(tiny_model, stats, windows, 0.5, parse_structure(None), batch_size=2)
    ev.calibration = Calibration(cal, {"source": "random"})
    return ev


def test_fitness_is_perplexity_of_the_pruned_model_and_weights_are_restored(evaluator, tiny_model):
    dense = {n: l.weight.clone() for n, l in prunable_linears(tiny_model).items()}
    result = evaluator.evaluate(lambda W, X, G: W.abs() * X)
    assert result.status == "ok" and len(result.window_nll) == 3
    assert all(torch.equal(l.weight, dense[n]) for n, l in prunable_linears(tiny_model).items())
    Wanda().prune(tiny_model, evaluator.calibration, 0.5, parse_structure(None), progress=False)
    direct = perplexity(tiny_model, evaluator.windows, {}, progress=False).perplexity
    assert result.fitness == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("fn,status,reason", [
    (lambda W, X, G: W / 0.0, "invalid", "non-finite"),
    (lambda W, X, G: W * float("nan"), "invalid", "non-finite"),
    (lambda W, X, G: torch.ones_like(W), "invalid", "constant"),
    (lambda W, X, G: torch.zeros(2) + torch.zeros(3), "error", "RuntimeError"),
])
def test_bad_candidates_are_recorded_not_raised(evaluator, fn, status, reason):
    result = evaluator.evaluate(fn)
    assert result.status == status and reason in result.reason
    assert result.fitness is None and math.isinf(result.value)


def test_mask_cache_skips_the_forward(evaluator):
    first = evaluator.evaluate(lambda W, X, G: W.abs() * X)
    known = {first.mask_hash: {"fitness": first.fitness, "status": "ok"}}
    same_masks = evaluator.evaluate(lambda W, X, G: (W.abs() * X) ** 2, known)
    assert same_masks.mask_hash == first.mask_hash and same_masks.reason == "mask cache"
    assert same_masks.fitness == first.fitness and same_masks.window_nll == []
    other = evaluator.evaluate(lambda W, X, G: W.abs(), known)
    assert other.mask_hash != first.mask_hash and other.reason == ""


@pytest.mark.parametrize("structure", [None, "2:4"])
@pytest.mark.parametrize("fn", [
    lambda W, X, G: W.abs() * X,
    lambda W, X, G: (W.abs() / W.abs().amax() * 4).round(),  # many ties at each row's threshold
    lambda W, X, G: torch.sign(W),  # two values: every row tied
])
def test_accelerator_masks_with_one_read_back_equal_the_per_layer_ones(evaluator, fn, structure):
    evaluator.structure = parse_structure(structure)
    deferred = evaluator._masks_one_read_back(fn)  # what masks() does off the CPU
    assert deferred.keys() == evaluator.linears.keys()
    assert all(torch.equal(mask, make_mask(evaluator.layer_scores(fn, name), 0.5, evaluator.structure))
               for name, mask in deferred.items())


@pytest.mark.parametrize("fn,reason", [
    (lambda W, X, G: W / 0.0, "non-finite"),
    (lambda W, X, G: torch.ones_like(W), "constant"),
])
def test_accelerator_masks_raise_as_the_per_layer_check_does(evaluator, fn, reason):
    with pytest.raises(InvalidScore, match=f"{reason} scores in {next(iter(evaluator.linears))}"):
        evaluator._masks_one_read_back(fn)
