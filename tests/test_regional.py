import copy

import pytest
import torch

from evaluators import (RGS, Calibration, RegionalOptimised, Wanda, compute_statistics, get_pruner,
                        parse_structure, prunable_linears)
from evaluators.models import block_linears
from evaluators.blockwise import block_outputs, mask_block
from evaluators.pruners import BlockwisePruner
from evaluators.regional import reconstruction_error, regional_optimisation
from evaluators.stats import BlockInputs, activation_norms, regional_gradient_norms, regional_gradients

SPEC = {"source": "random", "n": 3}


def windows(n=3, seqlen=16, seed=1):
    return torch.randint(3, 104, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def cal(n=4):
    return Calibration(windows(n, seed=2), {"source": "random", "n": n})


def test_regional_gradients_match_per_window_autograd(tiny_model):
    ids = windows()
    block = tiny_model.model.layers[0]
    inputs = BlockInputs(tiny_model, ids, batch_size=2)  # batches of 2 and 1: per-window split must hold
    norms, outputs = regional_gradients(block, inputs)
    hidden = torch.cat(inputs.hidden)
    kwargs = inputs.kwargs[0]
    for name, linear in block_linears(block).items():
        grads = []
        for n in range(len(ids)):
            out = block(hidden[n:n + 1], **kwargs)
            g, = torch.autograd.grad(out.norm(), linear.weight)
            grads.append(g)
        grads = torch.stack(grads)
        assert torch.allclose(norms[name]["l2"], grads.pow(2).mean(0).sqrt(), rtol=1e-4, atol=1e-9), name
        assert torch.allclose(norms[name]["l1"], grads.abs().mean(0), rtol=1e-4, atol=1e-9), name
    with torch.no_grad():
        assert torch.allclose(torch.cat(outputs), block(hidden, **kwargs), atol=1e-6)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_statistic_r_is_cached_and_streams_blocks(tiny_model):
    ids = windows()
    direct = regional_gradient_norms(tiny_model, ids, progress=False)
    stats, info = compute_statistics(tiny_model, ids, SPEC, needs=("R",), progress=False)
    again, info2 = compute_statistics(tiny_model, ids, SPEC, needs=("R",), grad_norm="l1", progress=False)
    assert info["cache_hits"] == [] and info2["cache_hits"] == ["R"]
    for name, linear in prunable_linears(tiny_model).items():
        assert stats[name]["R"].shape == linear.weight.shape
        assert torch.allclose(stats[name]["R"], direct["l2"][name])
        assert torch.allclose(again[name]["R"], direct["l1"][name])
    # block 1's regional gradient is taken on the dense block 0's outputs
    inputs = BlockInputs(tiny_model, ids)
    inputs.forward(tiny_model.model.layers[0])
    norms, _ = regional_gradients(tiny_model.model.layers[1], inputs)
    assert torch.allclose(norms["mlp.down_proj"]["l2"], direct["l2"]["model.layers.1.mlp.down_proj"], atol=1e-7)


def test_rgs_score_formula():
    W = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    stats = {"X": torch.tensor([[2.0, 1.0]]), "R": torch.tensor([[0.01, 0.02], [0.0, 0.1]])}
    expected = (100 * stats["R"] + stats["X"]) * W.abs()
    assert torch.allclose(RGS().score(W, stats), expected)
    assert torch.allclose(RGS(alpha=0.0).score(W, stats), Wanda().score(W, stats))


def test_ro_lowers_reconstruction_error_and_keeps_mask(tiny_model):
    inputs = BlockInputs(tiny_model, windows(4), batch_size=2)
    block = tiny_model.model.layers[0]
    targets = block_outputs(block, inputs)
    masks = {}
    with torch.no_grad():
        for n, linear in block_linears(block).items():
            masks[n] = torch.rand(linear.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
            linear.weight.masked_fill_(masks[n], 0)
    kept = {n: linear.weight.detach().clone() for n, linear in block_linears(block).items()}
    before = reconstruction_error(block, inputs, targets)
    losses = regional_optimisation(block, inputs, masks, targets, samples=4, steps=30, lr=1e-4)
    after = reconstruction_error(block, inputs, targets)
    assert len(losses) == 30 and after < 0.8 * before
    for n, linear in block_linears(block).items():
        assert torch.equal(linear.weight == 0, masks[n] | (kept[n] == 0))  # mask unchanged, pruned exactly 0
        assert not torch.equal(linear.weight, kept[n])  # the remaining weights moved
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize("structure", [None, "2:4"])
@pytest.mark.parametrize("ro", [True, False])
@pytest.mark.parametrize("sequential", [False, True])
def test_wanda_plus_plus_exact_sparsity(tiny_model, structure, ro, sequential):
    pruner = get_pruner("wanda++", ro=ro, grad_norm=None, score=None)
    assert pruner.name == ("wanda++" if ro else "wanda++ (rgs)")
    report = pruner.prune(tiny_model, cal(), 0.5, parse_structure(structure), sequential, progress=False)
    assert report.overall_sparsity == pytest.approx(0.5)
    for name, linear in prunable_linears(tiny_model).items():
        assert report.layer_sparsity[name] == pytest.approx(0.5)
        assert (linear.weight == 0).float().mean().item() == pytest.approx(0.5)
    assert tiny_model.lm_head.weight.ne(0).all()
    assert report.sequential == (ro or sequential)


def test_ro_on_any_score_changes_weights_not_sparsity(tiny_model):
    other = copy.deepcopy(tiny_model)
    Wanda().prune(tiny_model, cal(), 0.5, parse_structure(None), sequential=True, progress=False)
    report = RegionalOptimised(Wanda(), rounds=2, lr=1e-4).prune(other, cal(), 0.5, parse_structure(None),
                                                                 progress=False)
    assert report.method == "wanda+ro" and report.overall_sparsity == pytest.approx(0.5)
    assert report.statistics["blocks"]["model.layers.0"]["ro_last_loss"] >= 0
    plain, tuned = prunable_linears(tiny_model), prunable_linears(other)
    assert any(not torch.equal(plain[n].weight, tuned[n].weight) for n in plain)


def test_sequential_rgs_block0_matches_one_shot(tiny_model):
    other = copy.deepcopy(tiny_model)
    RGS().prune(tiny_model, cal(), 0.5, parse_structure(None), sequential=False, progress=False)
    RGS().prune(other, cal(), 0.5, parse_structure(None), sequential=True, progress=False)
    one, seq = prunable_linears(tiny_model), prunable_linears(other)
    assert all(torch.equal(one[n].weight, seq[n].weight) for n in one if ".layers.0." in n)


def test_driver_measures_block_inputs(tiny_model):
    """X, H and the dense targets a block method sees are those of the current (pruned-stream) inputs."""
    seen = {}

    class Probe(BlockwisePruner):
        name, needs, batch_size = "probe", ("X", "H", "Y"), 2

        def prune_block(self, step):
            seen[step.index] = (step.stats, step.targets, [h.clone() for h in step.inputs.hidden])
            mask_block(step, Wanda())

    c = cal()
    dense = copy.deepcopy(tiny_model)
    Probe().prune(tiny_model, c, 0.5, parse_structure(None), progress=False)
    x0 = activation_norms(dense, c.windows, progress=False)
    stats0, targets0, hidden0 = seen[0]
    assert torch.allclose(stats0["self_attn.q_proj"]["X"], x0["model.layers.0.self_attn.q_proj"], atol=1e-6)
    x = torch.cat(hidden0).reshape(-1, 32)
    normed = dense.model.layers[0].input_layernorm(x)
    assert torch.allclose(stats0["self_attn.q_proj"]["H"], 2 / 4 * normed.T @ normed, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(torch.cat(targets0), dense.model.layers[0](torch.cat(hidden0), **_kwargs(dense, c)),
                              atol=1e-5)
    # block 1 sees the outputs of the *pruned* block 0
    pruned0 = copy.deepcopy(dense.model.layers[0])
    for n, linear in block_linears(pruned0).items():
        linear.weight.data = dict(prunable_linears(tiny_model))[f"model.layers.0.{n}"].weight.data.clone()
    with torch.no_grad():
        expected = pruned0(torch.cat(hidden0), **_kwargs(dense, c))
    assert torch.allclose(torch.cat(seen[1][2]), expected, atol=1e-5)


def _kwargs(model, c):
    return BlockInputs(model, c.windows, batch_size=len(c.windows)).kwargs[0]
