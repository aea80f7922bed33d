"""Fitness of a score function: perplexity of the model pruned by it, on the fitness windows.

The evaluator keeps a dense copy of every prunable weight and the calibration statistics, so one
evaluation is: score every layer → mask → hash the masks → (cache hit? done) → zero the masked weights →
forward the fitness windows → restore the dense weights. A score that is non-finite or constant in a layer
is *invalid* (worst fitness, with the reason); an exception in the score function is an *error*; neither
raises out of ``evaluate``.
"""
from __future__ import annotations

import hashlib
import math
import time
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .masks import Structure, make_mask
from .models import prunable_linears
from .perplexity import window_nlls


@dataclass
class FitnessResult:
    fitness: float | None  # perplexity; None when the candidate is invalid or failed
    status: str  # "ok" | "invalid" | "error"
    reason: str = ""
    mask_hash: str | None = None
    seconds: float = 0.0
    window_nll: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        """The fitness to minimise: perplexity, or +inf for an invalid or failed candidate."""
        return self.fitness if self.fitness is not None else math.inf

    def to_dict(self) -> dict:
        return asdict(self)


class InvalidScore(ValueError):
    pass


class FitnessEvaluator:
    """Scores candidate score functions ``fn(W=..., X=..., G=...)`` on one model and one data split.

    Args:
        model: the dense model; its prunable weights are modified during ``evaluate`` and restored after.
        stats: ``{layer: {"X": (1, in), "G": (out, in), ...}}`` from ``compute_statistics``.
        windows: fitness token windows ``(n, seqlen)``.
        sparsity, structure: the pruning problem.
    """

    def __init__(self, model, stats: dict, windows: torch.Tensor, sparsity: float, structure: Structure,
                 batch_size: int = 4):
        self.model = model
        self.linears = prunable_linears(model)
        self.dense = {name: linear.weight.detach().clone() for name, linear in self.linears.items()}
        self.stats = stats
        self.windows = windows
        self.sparsity = sparsity
        self.structure = structure
        self.batch_size = batch_size

    def masks(self, fn) -> dict[str, torch.Tensor]:
        """The mask of every layer under ``fn``; raises ``InvalidScore`` for unusable scores."""
        masks = {}
        with torch.no_grad():
            for name, weight in self.dense.items():
                leaves = {"W": weight, **self.stats.get(name, {})}
                scores = torch.broadcast_to(fn(**leaves), weight.shape)
                low, high = torch.aminmax(scores)  # NaN propagates into both, inf into one
                if not (math.isfinite(low) and math.isfinite(high)):
                    raise InvalidScore(f"non-finite scores in {name}")
                if low == high:
                    raise InvalidScore(f"constant scores in {name}")
                masks[name] = make_mask(scores, self.sparsity, self.structure)
        return masks

    @staticmethod
    def mask_hash(masks: dict[str, torch.Tensor]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(masks):
            digest.update(name.encode())
            digest.update(np.packbits(masks[name].cpu().numpy()).tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def perplexity_with(self, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-window NLL of the model with ``masks`` applied; the dense weights are restored after."""
        try:
            for name, mask in masks.items():
                self.linears[name].weight.masked_fill_(mask, 0.0)
            return window_nlls(self.model, self.windows, self.batch_size)
        finally:
            self.restore()

    @torch.no_grad()
    def restore(self) -> None:
        for name, weight in self.dense.items():
            self.linears[name].weight.copy_(weight)

    def evaluate(self, fn, known: dict[str, float] | None = None) -> FitnessResult:
        """Fitness of ``fn``; ``known`` maps mask hashes to fitness already measured (skips the forward)."""
        start = time.perf_counter()
        try:
            masks = self.masks(fn)
        except InvalidScore as err:
            return FitnessResult(None, "invalid", str(err), seconds=time.perf_counter() - start)
        except Exception as err:  # a candidate must never stop the search
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            return FitnessResult(None, "error", reason + " | " + traceback.format_exc(limit=-1).strip().splitlines()[-1],
                                 seconds=time.perf_counter() - start)
        digest = self.mask_hash(masks)
        if known is not None and digest in known:
            return FitnessResult(known[digest], "ok", "mask cache", digest, time.perf_counter() - start)
        nll = self.perplexity_with(masks)
        ppl = math.exp(nll.mean().item())
        if not math.isfinite(ppl):
            return FitnessResult(None, "invalid", "non-finite perplexity", digest, time.perf_counter() - start)
        return FitnessResult(ppl, "ok", "", digest, time.perf_counter() - start, nll.tolist())
