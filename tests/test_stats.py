import torch

from evaluators import compute_statistics, prunable_linears
from evaluators.stats import BlockInputs, gradient_norms

SPEC = {"source": "random", "n": 3}


def windows():
    return torch.randint(3, 104, (3, 16), generator=torch.Generator().manual_seed(1))


def test_activation_norms_match_direct_hooks(tiny_model):
    ids = windows()
    direct, handles = {}, []
    for name, linear in prunable_linears(tiny_model).items():
        def hook(_m, args, name=name):
            x = args[0].reshape(-1, args[0].shape[-1])
            direct[name] = direct.get(name, 0) + (x * x).sum(0)
        handles.append(linear.register_forward_pre_hook(hook))
    with torch.no_grad():
        tiny_model(ids)
    for h in handles:
        h.remove()
    stats, _ = compute_statistics(tiny_model, ids, SPEC, needs=("X",))
    assert set(stats) == set(direct)
    for name, sq in direct.items():
        assert stats[name]["X"].shape == (1, sq.numel())
        assert torch.allclose(stats[name]["X"][0], torch.sqrt(sq / 3), rtol=1e-4, atol=1e-6)


def test_gradient_norms_match_per_sample_autograd(tiny_model):
    ids = windows()
    norms = {norm: gradient_norms(tiny_model, ids, norm, progress=False) for norm in ("l1", "l2")}
    name, linear = next(iter(prunable_linears(tiny_model).items()))
    grads = []
    for w in ids:
        g, = torch.autograd.grad(tiny_model(input_ids=w[None], labels=w[None]).loss, linear.weight)
        grads.append(g)
    grads = torch.stack(grads)
    assert torch.allclose(norms["l2"][name], grads.pow(2).sum(0).sqrt(), rtol=1e-4, atol=1e-8)
    assert torch.allclose(norms["l1"][name], grads.abs().sum(0), rtol=1e-4, atol=1e-8)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_second_call_is_a_cache_hit(tiny_model):
    ids = windows()
    first, info1 = compute_statistics(tiny_model, ids, SPEC, needs=("X", "G"))
    again, info2 = compute_statistics(tiny_model, ids, SPEC, needs=("X", "G"))
    assert info1["cache_hits"] == [] and info2["cache_hits"] == ["X", "G"]
    second, info_l1 = compute_statistics(tiny_model, ids, SPEC, needs=("X", "G"), grad_norm="l1")
    assert info_l1["cache_hits"] == ["X"]  # only the norm a run uses is computed and cached
    name = next(iter(first))
    assert torch.equal(first[name]["G"], again[name]["G"])
    assert torch.equal(first[name]["X"], second[name]["X"])
    assert not torch.equal(first[name]["G"], second[name]["G"])  # l1 vs l2
    _, info3 = compute_statistics(tiny_model, ids, {**SPEC, "n": 4}, needs=("X",))
    assert info3["cache_hits"] == []  # a different text spec is a different key


def test_block_inputs_reproduce_the_model_forward(tiny_model):
    ids = windows()
    inputs = BlockInputs(tiny_model, ids, batch_size=2)
    for block in tiny_model.model.layers:
        inputs.forward(block)
    hidden = torch.cat([tiny_model.model.norm(h) for h in inputs.hidden])
    with torch.no_grad():
        expected = tiny_model.model(ids).last_hidden_state
    assert torch.allclose(hidden, expected, atol=1e-5)
