import pytest
import torch

from evaluators import Calibration, SparseGPT, get_pruner, parse_structure, prunable_linears, sparsegpt_prune


def layer_case(rows=6, cols=12, tokens=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2.0, cols, dtype=torch.float64)
    return W, X, 2 / 4 * X.T @ X  # 4 "windows": the scale is irrelevant, only H's shape matters


def obs_reference(W, H, sparsity=0.5, nm=None, percdamp=0.01):
    """Direct OBS, one column at a time, with the explicit inverse Hessian of the remaining columns.

    After column i is handled, it leaves the problem: the inverse Hessian of the remaining columns is the
    Schur complement ``M[1:, 1:] − M[1:, 0] M[0, 1:] / M[0, 0]`` (no Cholesky factor involved).
    """
    W, H = W.clone(), H.clone()
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    rows, cols = W.shape
    diag, M = [], torch.linalg.inv(H)
    for _ in range(cols):  # [H_F⁻¹]_ii does not depend on W: the saliency denominators
        diag.append(M[0, 0])
        M = M[1:, 1:] - M[1:, :1] @ M[:1, 1:] / M[0, 0]
    d = torch.stack(diag)
    mask = torch.zeros_like(W, dtype=torch.bool)
    if nm is None:
        saliency = (W ** 2 / d).reshape(-1)
        mask.view(-1)[torch.sort(saliency, stable=True).indices[: int(W.numel() * sparsity)]] = True
    M = torch.linalg.inv(H)
    for i in range(cols):
        if nm is not None and i % nm[1] == 0:
            group = W[:, i:i + nm[1]] ** 2 / d[i:i + nm[1]]
            mask[:, i:i + nm[1]].scatter_(1, torch.sort(group, dim=1, stable=True).indices[:, :nm[0]], True)
        err = torch.where(mask[:, i], W[:, i], 0.0) / M[0, 0]
        W[:, i:] -= err.unsqueeze(1) * M[0].unsqueeze(0)  # δw = −w_p / [H⁻¹]_pp · H⁻¹[p, :]
        W[mask[:, i], i] = 0.0
        M = M[1:, 1:] - M[1:, :1] @ M[:1, 1:] / M[0, 0]
    return W


def test_unstructured_matches_direct_obs():
    W, _, H = layer_case()
    ours = sparsegpt_prune(W, H, 0.5, parse_structure(None), blocksize=128)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, obs_reference(W, H, 0.5), atol=1e-10)
    assert (ours == 0).sum().item() == W.numel() // 2


@pytest.mark.parametrize("blocksize", [4, 8, 128])
def test_nm_matches_direct_obs_with_lazy_blocks(blocksize):
    W, _, H = layer_case(rows=5, cols=16, seed=1)
    ours = sparsegpt_prune(W, H, 0.5, parse_structure("2:4"), blocksize=blocksize)
    assert torch.allclose(ours, obs_reference(W, H, nm=(2, 4)), atol=1e-10)
    assert ((ours == 0).reshape(5, 4, 4).sum(-1) == 2).all()


def test_update_beats_zeroing_the_same_mask():
    W, Z, _ = layer_case(rows=8, cols=24, tokens=64, seed=2)
    X = Z @ (torch.eye(24, dtype=torch.float64) + 0.5)  # correlated input channels, as in real activations
    H = X.T @ X
    pruned = sparsegpt_prune(W, H, 0.5, parse_structure(None))
    zeroed = W.masked_fill(pruned == 0, 0.0)
    err = lambda V: ((X @ (W - V).T) ** 2).sum().item()
    assert err(pruned) < 0.7 * err(zeroed)


def test_float32_close_to_float64():
    W, _, H = layer_case(seed=3)
    ours = sparsegpt_prune(W.float(), H.float(), 0.5)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), obs_reference(W, H), atol=1e-4)


@pytest.mark.parametrize("structure", [None, "2:4", "4:8"])
def test_exact_sparsity_on_tiny_llama(tiny_model, structure):
    calibration = Calibration(torch.randint(3, 104, (4, 16), generator=torch.Generator().manual_seed(2)),
                              {"source": "random"})
    dense = {n: l.weight.detach().clone() for n, l in prunable_linears(tiny_model).items()}
    report = get_pruner("sparsegpt", grad_norm="l2", ro=True).prune(
        tiny_model, calibration, 0.5, parse_structure(structure), progress=False)
    assert report.method == "sparsegpt" and report.sequential
    assert report.overall_sparsity == pytest.approx(0.5)
    for name, linear in prunable_linears(tiny_model).items():
        assert report.layer_sparsity[name] == pytest.approx(0.5)
        assert (linear.weight == 0).float().mean().item() == pytest.approx(0.5)
        assert not torch.equal(linear.weight, dense[name].masked_fill(linear.weight == 0, 0))  # weights updated
    assert tiny_model.lm_head.weight.ne(0).all()


def test_needs_calibration(tiny_model):
    with pytest.raises(ValueError, match="calibration"):
        SparseGPT().prune(tiny_model, None, 0.5, parse_structure(None), progress=False)
