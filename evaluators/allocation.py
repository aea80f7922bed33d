"""Layer-wise sparsity allocation: how much of each decoder block to prune, composable with any score.

``uniform`` prunes every block to the target sparsity. ``owl`` (Yin et al., "Outlier Weighed Layerwise
Sparsity", ICML 2024) prunes blocks with more activation outliers less:

1. each block's outlier ratio ``D_i``: the share of its weights whose Wanda score ``|W|·X`` (``X`` from the
   dense model) exceeds ``M`` times the mean score over the whole block (M = 5 in the paper);
2. ``D`` is min-max scaled to ``[0, 2λ]`` (λ = 0.08), centred on its mean over blocks (weighted by block
   size, which is the plain mean on a LLaMA, where every block has the same size) and a block's sparsity
   is the target minus its centred value.

The size-weighted mean of the block sparsities is therefore exactly the target; the spread between the
least and the most pruned block is exactly ``2λ`` (0 when every block has the same outlier ratio). N:M
structures fix N/M in every group and take no allocation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .masks import MaskError, Structure
from .models import layout
from .stats import compute_statistics

ALLOCATIONS = ("uniform", "owl")
OWL_M = 5.0
OWL_LAMBDA = 0.08


@dataclass(frozen=True)
class Allocation:
    """A sparsity per decoder block (in order) whose size-weighted mean is ``target``."""

    target: float
    blocks: tuple[float, ...]
    method: str = "owl"
    outlier_ratios: tuple[float, ...] = ()
    m: float = OWL_M
    lam: float = OWL_LAMBDA

    def describe(self) -> dict:
        return {"method": self.method, "target": self.target, "m": self.m, "lambda": self.lam,
                "blocks": [round(s, 6) for s in self.blocks],
                "outlier_ratios": [round(r, 6) for r in self.outlier_ratios]}


def block_sparsity(sparsity: float | Allocation, index: int) -> float:
    """The sparsity of decoder block ``index`` under a uniform target or an allocation."""
    return sparsity.blocks[index] if isinstance(sparsity, Allocation) else sparsity


def target_sparsity(sparsity: float | Allocation) -> float:
    return sparsity.target if isinstance(sparsity, Allocation) else sparsity


def layer_sparsities(model, sparsity: float | Allocation) -> dict[str, float]:
    """Every prunable Linear's sparsity, by its full name."""
    parts = layout(model)
    return {parts.name(i, local): block_sparsity(sparsity, i)
            for i in range(len(parts.blocks)) for local in parts.block_linears[i]}


@torch.no_grad()
def outlier_ratios(model, stats: dict, m: float = OWL_M) -> list[float]:
    """Each block's share of weights whose ``|W|·X`` exceeds ``m`` × the block's mean ``|W|·X``."""
    parts = layout(model)
    ratios = []
    for i in range(len(parts.blocks)):
        linears = parts.block_linears[i]

        def scores():
            for local, linear in linears.items():
                yield linear.weight.detach().float().abs() * stats[parts.name(i, local)]["X"].float()

        count = sum(linear.weight.numel() for linear in linears.values())
        mean = sum(s.sum(dtype=torch.float64).item() for s in scores()) / count
        ratios.append(sum(int((s > m * mean).sum()) for s in scores()) / count)
    return ratios


def owl_sparsities(ratios, sizes, target: float, lam: float = OWL_LAMBDA) -> tuple[float, ...]:
    """OWL's block sparsities from outlier ratios; raises ``MaskError`` when one would leave (0, 1)."""
    r, w = np.asarray(ratios, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    spread = (r - r.min()) / (r.max() - r.min()) * 2 * lam if r.max() > r.min() else np.zeros_like(r)
    sparsities = target - (spread - np.average(spread, weights=w))
    if sparsities.min() <= 0 or sparsities.max() >= 1:
        raise MaskError(f"owl with lambda {lam:g} at sparsity {target:g} gives block sparsities from "
                        f"{sparsities.min():.3f} to {sparsities.max():.3f}, outside (0, 1); lower lambda")
    return tuple(float(s) for s in sparsities)


def owl_allocation(model, stats: dict, target: float, m: float = OWL_M, lam: float = OWL_LAMBDA) -> Allocation:
    """The OWL allocation of ``target`` over the model's blocks, given dense ``X`` statistics."""
    parts = layout(model)
    ratios = outlier_ratios(model, stats, m)
    sizes = [sum(linear.weight.numel() for linear in parts.block_linears[i].values())
             for i in range(len(parts.blocks))]
    return Allocation(target, owl_sparsities(ratios, sizes, target, lam), "owl", tuple(ratios), m, lam)


def check_allocation(method: str, structure: Structure, m: float = OWL_M, lam: float = OWL_LAMBDA) -> None:
    """Refuse an allocation that cannot be made, before any model is loaded."""
    if method not in ALLOCATIONS:
        raise MaskError(f"unknown allocation {method!r}; choose from {', '.join(ALLOCATIONS)}")
    if method != "uniform" and not structure.unstructured:
        raise MaskError(f"allocation {method!r} spreads unstructured sparsity; {structure} fixes N/M in every group")
    if not (m > 0 and lam >= 0):
        raise MaskError(f"owl needs M > 0 and lambda ≥ 0, got M = {m:g}, lambda = {lam:g}")


def allocate(model, calibration, sparsity: float, structure: Structure, method: str = "uniform",
             m: float = OWL_M, lam: float = OWL_LAMBDA, progress: bool = True) -> float | Allocation:
    """``sparsity`` itself for ``uniform``; for ``owl`` the allocation from the dense model's ``X`` on
    ``calibration`` (cached like every statistic)."""
    check_allocation(method, structure, m, lam)
    if method == "uniform":
        return sparsity
    if calibration is None:
        raise ValueError(f"allocation {method!r} needs calibration windows for X")
    stats, _ = compute_statistics(model, calibration.windows, calibration.spec, ("X",),
                                  use_cache=calibration.use_cache, progress=progress)
    return owl_allocation(model, stats, sparsity, m, lam)
