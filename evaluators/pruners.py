"""Pruners: a name, the statistics they need, and a score function. Higher score = keep.

Every pruner — the baselines here and a discovered symbolic metric — has the same shape::

    pruner = Wanda()
    report = pruner.prune(model, calibration, sparsity=0.5, structure=parse_structure("2:4"))

``score(W, stats)`` receives the float32 weight ``(out, in)`` and ``stats`` with the leaves it asked for:
``X`` of shape ``(1, in)`` and ``G`` of shape ``(out, in)`` (see ``stats.py`` for their scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from primitives.ops_torch import colrel, rowrel

from .apply import Calibration, PruneReport, prune_model
from .blockwise import BlockStep, mask_block, prune_blockwise
from .masks import GROUPS, Structure


class Pruner:
    """Base class: subclasses set ``name`` and ``needs`` and implement ``score``."""

    name: str = "pruner"
    needs: tuple[str, ...] = ()
    grad_norm: str = "l2"
    group: str = "row"  # comparison group of unstructured masks: "row" (Wanda's) or "layer" (masks.GROUPS)
    sequential_batch = 8  # calibration windows per forward when it runs block-sequentially

    def score(self, W: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def check(self, structure: Structure) -> None:
        """Raise ``MaskError`` for a structure this method cannot prune to; ``prune`` calls it first, and a
        caller can call it before any model is loaded."""

    def prune(self, model, calibration: Calibration | None = None, sparsity: float = 0.5,
              structure: Structure = Structure(), sequential: bool = False, progress: bool = True) -> PruneReport:
        """Zero the lowest-scoring weights of every prunable Linear. One-shot: statistics of the dense model.
        ``sequential`` (Wanda's protocol, needs ``calibration``): block by block through the one block-wise
        driver, ``X`` measured on the outputs of the already-pruned blocks."""
        self.check(structure)
        if sequential and calibration is not None:
            return prune_blockwise(model, SequentialScore(self, self.sequential_batch), calibration, sparsity,
                                   structure, progress)
        return prune_model(model, self, calibration, sparsity, structure, progress)

    def describe(self) -> dict:
        return {"name": self.name, "needs": list(self.needs)}


@dataclass
class Magnitude(Pruner):
    """|W| (Han et al., 2015), compared over the whole layer as in the reference code (Wanda's and
    GBLM-Pruner's ``prune_magnitude``); ``group="row"`` compares within each row instead."""

    group: str = "layer"
    name: str = "magnitude"

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {self.group!r}")

    def score(self, W, stats):
        return W.abs()

    def describe(self):
        return {**super().describe(), "group": self.group}


class Wanda(Pruner):
    """|W| · ‖X‖ (Sun et al., 2024)."""

    name = "wanda"
    needs = ("X",)

    def score(self, W, stats):
        return W.abs() * stats["X"]


GBLM_REFERENCE_ALPHA = 100.0


@dataclass
class GBLM(Pruner):
    """|W| · ‖X‖ + α · |W| · G (Das et al., 2023); ``grad_norm`` is ``l2`` (default) or ``l1``.

    α = 100 by default: the reference code (``gradient_computation.py``, ``--scale 100``) stores
    ``100 · sqrt(Σ g²)`` (l1: ``Σ |100 g|``) and adds it unweighted, and our ``G`` is ``sqrt(Σ g²)``, so
    α = 100 on our ``G`` is the authors' score. ``alpha=1`` (an option: ``--gblm-alpha 1``) weights the
    gradient term so little that GBLM then ranks almost exactly like Wanda.
    """

    grad_norm: str = "l2"
    alpha: float = GBLM_REFERENCE_ALPHA
    name: str = "gblm"
    needs: tuple[str, ...] = ("X", "G")

    def __post_init__(self):
        if self.grad_norm not in ("l1", "l2"):
            raise ValueError(f"grad_norm must be l1 or l2, got {self.grad_norm!r}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be ≥ 0, got {self.alpha!r}")

    def score(self, W, stats):
        return W.abs() * stats["X"] + self.alpha * W.abs() * stats["G"]

    def describe(self):
        return {**super().describe(), "grad_norm": self.grad_norm, "alpha": self.alpha}


def min_max_scale(t: torch.Tensor) -> torch.Tensor:
    """(t − min) / (max − min) over the whole tensor; a constant tensor maps to zeros."""
    lo, hi = t.min(), t.max()
    return (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)


class PrunerZero(Pruner):
    """Pruner-Zero's published metric |W·W| · mms(G) (Dong et al., 2024), mms over the whole matrix."""

    name = "pruner-zero"
    needs = ("G",)

    def score(self, W, stats):
        return (W * W).abs() * min_max_scale(stats["G"])


@dataclass
class RIA(Pruner):
    """Relative importance and activations (Zhang et al., ICLR 2024):
    ``(|W| / Σ_row|W| + |W| / Σ_col|W|) · X^a``, a = 0.5 by default.

    As the reference code (``prune_ria``): each weight's magnitude relative to the L1 norm of its output row
    plus relative to that of its input column, times Wanda's ``sqrt(scaler_row)`` (our ``X``) to the power
    ``a``; unstructured masks compare over the whole layer (``group="row"``, the reference's
    ``--per_outneuron``, compares within each row), N:M within each group of a row. The score is the
    search expression ``mul(add(rowrel(abs(W)), colrel(abs(W))), sqrt(X))`` for a = 0.5, bit for bit.
    """

    a: float = 0.5
    group: str = "layer"
    name: str = "ria"
    needs: tuple[str, ...] = ("X",)

    def __post_init__(self):
        if not (isinstance(self.a, (int, float)) and 0 <= self.a < float("inf")):
            raise ValueError(f"a must be a finite number ≥ 0, got {self.a!r}")
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {self.group!r}")

    def score(self, W, stats):
        A = W.abs()  # rowrel/colrel: the search's operators, so the seed metric "ria" gives exactly these scores
        X = stats["X"]
        return (rowrel(A) + colrel(A)) * (X.sqrt() if self.a == 0.5 else X.pow(self.a))

    def describe(self):
        return {**super().describe(), "a": self.a, "group": self.group}


@dataclass
class ScoreFunction(Pruner):
    """Any score given by code: ``fn(W, stats) -> scores``."""

    fn: Callable[[torch.Tensor, dict], torch.Tensor] = None
    name: str = "custom"
    needs: tuple[str, ...] = ()
    grad_norm: str = "l2"

    def score(self, W, stats):
        return self.fn(W, stats)


class BlockwisePruner(Pruner):
    """A pruner whose ``prune`` goes block by block through ``prune_blockwise``.

    These methods are block-sequential by construction (their papers' protocol): ``prune`` accepts
    ``sequential`` for interface compatibility and always reports ``sequential=True``.
    """

    batch_size: int = 2

    def prune_block(self, step: BlockStep) -> None:
        raise NotImplementedError

    def prune(self, model, calibration: Calibration | None = None, sparsity: float = 0.5,
              structure: Structure = Structure(), sequential: bool = False, progress: bool = True) -> PruneReport:
        self.check(structure)
        return prune_blockwise(model, self, calibration, sparsity, structure, progress)


class RankedBlockwisePruner(BlockwisePruner):
    """A block-wise step on top of another pruner's within-row ranking (any score, a discovered metric
    included): it needs what the ranking needs plus the dense block outputs ``Y``, and scores with it."""

    def __init__(self, ranking: Pruner):
        self.ranking = ranking
        self.grad_norm = getattr(ranking, "grad_norm", "l2")

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(self.ranking.needs) + ("Y",)

    def score(self, W, stats):
        return self.ranking.score(W, stats)


class SequentialScore(BlockwisePruner):
    """Any score pruner run block-sequentially, ``X`` and ``R`` measured on the current inputs."""

    def __init__(self, pruner: Pruner, batch_size: int = 4):
        self.pruner, self.name, self.needs = pruner, pruner.name, tuple(pruner.needs)
        self.grad_norm, self.batch_size = getattr(pruner, "grad_norm", "l2"), batch_size

    def prune_block(self, step):
        mask_block(step, self.pruner)
