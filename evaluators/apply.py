"""Applying a pruner's scores to every prunable Linear one-shot: statistics come from the dense model
(cached), every layer is scored and masked at once.

Sequential pruning (Wanda's protocol: blocks in order, each block's ``X`` measured on the outputs of the
already-pruned blocks; ``G`` from the dense model, as in GBLM-Pruner, since a backward per block is not
local) goes through the one block-wise driver, ``blockwise.prune_blockwise``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .allocation import Allocation, block_sparsity, target_sparsity
from .masks import Structure, make_mask, resolve_sparsity
from .models import layout
from .stats import compute_statistics


class ScoreError(ValueError):
    """A score function produced non-finite values or the wrong shape."""


@dataclass
class Calibration:
    """Token windows for statistics, and the description saved with every result."""

    windows: torch.Tensor
    spec: dict
    use_cache: bool = True


@dataclass
class PruneReport:
    method: str
    sparsity: float
    structure: str
    sequential: bool
    layer_sparsity: dict[str, float]
    overall_sparsity: float
    statistics: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    allocation: dict | None = None  # a layer-wise allocation's description (allocation.Allocation)

    def to_dict(self) -> dict:
        return asdict(self)


def checked_scores(pruner, weight: torch.Tensor, stats: dict, name: str) -> torch.Tensor:
    """The pruner's float32 scores for one layer, whatever the model's dtype; raises ``ScoreError``."""
    scores = pruner.score(weight.float(), {kind: value.float() for kind, value in stats.items()})
    try:  # a score built from X alone is (1, in): every row ranks the same way
        scores = torch.broadcast_to(scores, weight.shape)
    except RuntimeError:
        raise ScoreError(f"{pruner.name}: scores of shape {tuple(scores.shape)} for {name} "
                         f"of shape {tuple(weight.shape)}") from None
    if not torch.isfinite(scores).all():
        raise ScoreError(f"{pruner.name}: non-finite scores for {name}")
    return scores


@torch.no_grad()
def _mask_layer(pruner, name, linear, stats, sparsity, structure) -> float:
    weight = linear.weight.data
    mask = make_mask(checked_scores(pruner, weight, stats, name), sparsity, structure, pruner.group)
    weight[mask] = 0
    return (weight == 0).float().mean().item()


def prune_model(model, pruner, calibration: Calibration | None, sparsity: float | Allocation,
                structure: Structure, progress: bool = True) -> PruneReport:
    """One-shot: score every prunable Linear from the dense model's statistics, zero the lowest scores in
    place and report what was done (sequential pruning goes through ``blockwise.prune_blockwise``).
    ``sparsity`` is one target or a per-block ``Allocation``."""
    allocation = sparsity if isinstance(sparsity, Allocation) else None
    target = target_sparsity(sparsity)
    target, structure = resolve_sparsity(target if structure.unstructured else None, structure)  # N:M decides
    needs = tuple(pruner.needs)
    if needs and calibration is None:
        raise ValueError(f"{pruner.name} needs calibration statistics {needs}")
    t0 = time.perf_counter()
    stats, info = ({}, {})
    if needs:
        stats, info = compute_statistics(model, calibration.windows, calibration.spec, needs,
                                         getattr(pruner, "grad_norm", "l2"), calibration.use_cache, progress)
    t_stats = time.perf_counter() - t0
    parts = layout(model)
    layer_sparsity: dict[str, float] = {}
    for i, block in enumerate(tqdm(parts.blocks, desc=f"pruning ({pruner.name})", disable=not progress)):
        for local, linear in parts.block_linears[i].items():
            name = parts.name(i, local)
            layer_sparsity[name] = _mask_layer(pruner, name, linear, stats.get(name, {}),
                                               block_sparsity(allocation or target, i), structure)
    sizes = {name: linear.weight.numel() for name, linear in parts.linears.items()}
    zeros = sum(layer_sparsity[name] * size for name, size in sizes.items())
    return PruneReport(
        method=pruner.name, sparsity=target, structure=str(structure), sequential=False,
        layer_sparsity=layer_sparsity, overall_sparsity=zeros / sum(sizes.values()),
        statistics={**info, "needs": list(needs)},
        seconds={"statistics": t_stats, "scoring_and_masking": time.perf_counter() - t0 - t_stats},
        allocation=allocation.describe() if allocation else None,
    )
