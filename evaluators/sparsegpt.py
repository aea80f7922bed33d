"""SparseGPT (Frantar & Alistarh, ICML 2023): OBS-based pruning with a column-wise weight update.

For a Linear with weight ``W (out, in)`` and input Hessian ``H = 2/N · Σ x xᵀ`` (measured on the layer's
inputs in the block-sequential stream), columns are processed left to right. Pruning entry ``(r, i)``
costs ``w²/[H_F⁻¹]_ii`` (OBS saliency, ``F`` = columns not yet processed) and the optimal compensation
subtracts ``w/[H_F⁻¹]_ii · H_F⁻¹[i, F]`` from the rest of row ``r``. The rows of the upper Cholesky
factor ``U`` of ``H⁻¹`` are exactly ``H_F⁻¹[i, F]/sqrt([H_F⁻¹]_ii)``, so one factorisation serves every
column, and updates are applied lazily per block of ``blocksize`` columns (one matrix product per block).

Masks: unstructured chooses, for each lazy block of columns, exactly ``floor(out·cols·s)`` entries with
the lowest saliency across the whole block (SparseGPT's adaptive mask selection; the reference code's
``<= threshold`` keeps one extra on ties, here the count is exact); N:M chooses the ``n`` lowest of each
group of ``m`` columns when the group is reached, on the already-updated weights. Defaults follow the
paper: ``blocksize=128``, dampening ``0.01 · mean(diag H)``.
"""
from __future__ import annotations

import torch

from .masks import MaskError, Structure
from .blockwise import BlockStep
from .pruners import BlockwisePruner


def _lowest_count(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest entries of the whole tensor (stable ties, lower index first)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        flat[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = True
    return flat.view_as(scores)


@torch.no_grad()
def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, structure: Structure = Structure(),
                    blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """The pruned and compensated weight (float32, or float64 if ``W`` is float64); inputs unchanged.

    Args:
        W: weight ``(out, in)``.
        H: input Hessian ``(in, in)`` (any positive scale).
        sparsity: fraction pruned (unstructured; ignored for N:M, which prunes ``n/m``).
        structure: unstructured or N:M (``blocksize`` must then be a multiple of ``m``).
        blocksize: columns per lazy update block.
        percdamp: dampening as a fraction of the mean Hessian diagonal.
    """
    dtype = torch.promote_types(W.dtype, torch.float32)
    W = W.detach().to(dtype).clone()
    H = H.detach().to(dtype).clone()
    rows, cols = W.shape
    if not structure.unstructured and blocksize % structure.m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={structure.m}")
    dead = torch.diag(H) == 0  # inputs that never fire: their weights do nothing; prune them for free
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if structure.unstructured:
            mask1 = _lowest_count(W1 ** 2 / d.unsqueeze(0) ** 2, int(W1.numel() * sparsity))
        for i in range(i2 - i1):
            if not structure.unstructured and i % structure.m == 0:
                group = W1[:, i:i + structure.m] ** 2 / d[i:i + structure.m].unsqueeze(0) ** 2
                lowest = torch.sort(group, dim=1, stable=True).indices[:, :structure.n]
                mask1[:, i:i + structure.m].scatter_(1, lowest, True)
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0)
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)  # OBS compensation inside the block
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # lazy update of every later column at once
    return W.masked_fill(mask, 0)  # exact zeros where pruned, whatever rounding did


class SparseGPT(BlockwisePruner):
    """SparseGPT, block-sequential: each block's Hessians are measured on the outputs of the pruned blocks.

    All Linears of a block use Hessians from one forward of the dense block (Wanda's reproduction of
    SparseGPT; the reference code's optional ``true-sequential`` re-measures after each sub-group).

    Args:
        blocksize: columns per lazy update block (paper: 128).
        percdamp: Hessian dampening, fraction of the mean diagonal (paper: 0.01).
        batch_size: calibration windows per forward.
    """

    name = "sparsegpt"
    needs = ("H",)

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01, batch_size: int = 4):
        self.blocksize, self.percdamp, self.batch_size = blocksize, percdamp, batch_size

    def score(self, W, stats):
        """OBS saliency ``w² / [H⁻¹]_jj`` with the full inverse (the mask itself is chosen column-wise)."""
        H = stats["H"].double().clone()
        H.diagonal().add_(self.percdamp * torch.diag(H).mean())
        return (W.double() ** 2 / torch.diag(torch.linalg.inv(H)).unsqueeze(0)).to(W.dtype)

    def check(self, structure: Structure) -> None:
        if not structure.unstructured and self.blocksize % structure.m:
            raise MaskError(f"SparseGPT's blocksize {self.blocksize} must be a multiple of M={structure.m} for "
                            f"{structure}")

    def prune_block(self, step: BlockStep) -> None:
        for n, linear in step.linears.items():
            pruned = sparsegpt_prune(linear.weight, step.stats[n]["H"], step.sparsity, step.structure,
                                     self.blocksize, self.percdamp)
            linear.weight.data.copy_(pruned.to(linear.weight.dtype))

    def describe(self):
        return {**super().describe(), "blocksize": self.blocksize, "percdamp": self.percdamp}
