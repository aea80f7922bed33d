"""Fitness of a score function: perplexity of the model pruned by it, on the fitness windows.

The per-window loss is the mean next-token NLL (``loss="nll"``; fitness = perplexity) or the mean token KL
divergence from the dense model's next-token distribution (``loss="kl"``; fitness = exp of the mean KL, 1 for
the dense model, so that everything that combines windows as ``exp(mean per-window loss)`` — racing,
successive halving, the caches — works unchanged). The dense log-probabilities on the fitness windows are
computed once per evaluator and held in float16 on the logits' device: ``windows × (seqlen − 1) × vocab × 2``
bytes (16 × 512 on SmolLM2's 49,152-token vocabulary: 0.8 GB).

One evaluation is: score every layer (in float32, one layer at a time) → mask → fingerprint the masks
(``fingerprint.py``) → (cache hit? done) → zero the masked weights → forward the fitness windows → restore
the dense weights. Nothing per candidate leaves the layers' devices but the fingerprint and the NLLs.

Restoring the weights takes one of two routes: on the CPU the evaluator keeps a dense copy of every
prunable weight (restoring is a memcpy; zeroing and restoring with ``masked_scatter`` took 7× longer there on
SmolLM2); on an accelerator it keeps no copy and saves only the values it zeroes (``sparsity`` × the weights)
for ``masked_scatter``, so that a bfloat16 LLaMA-7B search holds one copy of the model, not two.

A score that is non-finite or constant in a layer is *invalid* (worst fitness, with the reason); an exception
in the score function is an *error*; neither raises out of ``evaluate``.

Multi-fidelity (all optional):

* **window ranges** — ``evaluate(..., start, stop)`` forwards only windows ``[start, stop)``; per-window
  NLLs add up, so a candidate can be continued later (successive halving).
* **racing** — with a ``Race``, windows are forwarded ``chunk`` at a time and the candidate stops as soon
  as it is *certainly* worse than a reference: a paired one-sided test on per-window NLL differences,
  ``mean(d) − z·sd(d)/√n > 0`` after at least ``min_windows`` windows (unpaired against the reference's
  mean when its per-window NLLs are unknown).
* **proxies** — computed from the masks before any forward: ``recon``, the layer reconstruction error of
  the pruned Linear under the diagonal approximation ``Σ_pruned W²·X² / Σ W²·X²`` (exact when input
  channels are uncorrelated), averaged over layers; ``overlap``, the fraction of pruned positions shared
  with the reference masks (the current best individual), when set.
* **gate** — skip the forward when ``recon`` exceeds a threshold; optionally decided first from an
  estimate on a sample of rows, so that a clearly bad candidate does not pay for its full masks.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from primitives import compile_tree, parse

from .devices import room_for_copy, to_host
from .fingerprint import default_scheme, mask_fingerprint
from .masks import Structure, make_mask, pruned_per_row, selection, ties_by_index
from .models import prunable_linears
from .perplexity import dense_log_probs, window_kls, window_nlls

LOSSES = ("nll", "kl")


@dataclass
class FitnessResult:
    fitness: float | None  # perplexity over the windows evaluated; None when invalid or failed
    status: str  # "ok" | "raced" | "gated" | "invalid" | "error"
    reason: str = ""
    mask_hash: str | None = None
    seconds: float = 0.0
    window_nll: list[float] = field(default_factory=list)
    proxies: dict = field(default_factory=dict)

    @property
    def value(self) -> float:
        """The fitness to minimise: perplexity, or +inf unless the candidate completed."""
        return self.fitness if self.status == "ok" and self.fitness is not None else math.inf

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Race:
    """Stop a candidate once it is certainly worse than ``reference`` (mean NLL, or per-window NLLs)."""

    reference_nll: list[float] | float
    min_windows: int = 2
    z: float = 2.0
    chunk: int = 1

    def lost(self, nll: list[float], offset: int = 0) -> bool:
        n = len(nll)
        if n < self.min_windows:
            return False
        if isinstance(self.reference_nll, list) and len(self.reference_nll) >= offset + n:
            d = np.asarray(nll) - np.asarray(self.reference_nll[offset:offset + n])
        else:
            ref = self.reference_nll if not isinstance(self.reference_nll, list) else float(np.mean(self.reference_nll))
            d = np.asarray(nll) - ref
        spread = d.std(ddof=1) if n > 1 else math.inf
        return bool(d.mean() - self.z * spread / math.sqrt(n) > 0)


@dataclass(frozen=True)
class EvaluationRequest:
    """How to evaluate one candidate, every field optional; small and picklable, so it crosses joblib, Dask
    and Ray whole.

    ``start``/``stop``: the window range. ``race``: stop once certainly worse than its reference.
    ``proxies``: compute ``recon`` (and ``overlap`` against the masks of ``reference``, the current best's
    expression). ``gate``: skip the forward when ``recon`` exceeds it; ``gate_rows > 1`` estimates it on 1
    row in this many first.
    """

    start: int = 0
    stop: int | None = None
    race: Race | None = None
    proxies: bool = False
    reference: str | None = None
    gate: float | None = None
    gate_rows: int = 1


# A sampled ``recon`` estimate skips the full masks only above this multiple of the gate. On the 452
# distinct candidates of seven recorded SmolLM2 runs (two seeds), the estimate from one row in 8 was at most
# 1.16× the exact value (``benchmarks/gate_estimate.py``); a skip needs more than 1.25× the gate.
SAMPLED_GATE_FACTOR = 1.25


class InvalidScore(ValueError):
    pass


class FitnessEvaluator:
    """Scores candidate score functions ``fn(W=..., X=..., G=...)`` on one model and one data split.

    Args:
        model: the dense model; its prunable weights are modified during ``evaluate`` and restored after.
        stats: ``{layer: {"X": (1, in), "G": (out, in), ...}}`` from ``compute_statistics``, each on its
            layer's device.
        windows: fitness token windows ``(n, seqlen)``.
        sparsity, structure: the pruning problem.
        layer_sparsity: a sparsity per Linear name (a layer-wise allocation, ``allocation.layer_sparsities``)
            instead of ``sparsity`` everywhere.
        fingerprint: mask fingerprint scheme, ``device`` or ``host`` (``fingerprint.py``); ``None``: ``host``
            when every layer is on the CPU (the faster there), else ``device``.
        dense_copy: keep a dense copy of the prunable weights to restore from; ``None``: on the CPU, and on a
            GPU when the copy takes at most half its free memory (restoring from the copy is the faster route
            on both: ``benchmarks/gpu.py``); otherwise the pruned values are saved and scattered back.
        tokenizer: the model's tokenizer, kept for callers that cut more windows (the final test perplexities).
        loss: ``nll`` (fitness = perplexity) or ``kl`` (fitness = exp of the mean KL from the dense model).
    """

    def __init__(self, model, stats: dict, windows: torch.Tensor, sparsity: float, structure: Structure,
                 batch_size: int = 4, fingerprint: str | None = None, dense_copy: bool | None = None,
                 tokenizer=None, layer_sparsity: dict[str, float] | None = None, loss: str = "nll"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.linears = prunable_linears(model)
        self.on_cpu = all(linear.weight.device.type == "cpu" for linear in self.linears.values())
        self.fingerprint = fingerprint or default_scheme(self.on_cpu)
        weights = [linear.weight for linear in self.linears.values()]
        keep = room_for_copy(weights) if dense_copy is None else dense_copy
        self.dense = {name: linear.weight.detach().clone() for name, linear in self.linears.items()} if keep else None
        self.stats = stats
        self.windows = windows
        self.sparsity = sparsity
        self.sparsity_of = layer_sparsity or {name: sparsity for name in self.linears}
        self.structure = structure
        self.batch_size = batch_size
        self.loss = loss
        self.dense_targets = dense_log_probs(model, windows, batch_size) if loss == "kl" else None
        self._reference: tuple[str, dict[str, torch.Tensor]] | None = None  # (expression, masks) of the last one

    def weight(self, name: str) -> torch.Tensor:
        """Layer ``name``'s dense weight in float32 (a view when it is float32 already)."""
        return (self.dense[name] if self.dense is not None else self.linears[name].weight.detach()).float()

    @torch.no_grad()
    def layer_scores(self, fn, name: str) -> torch.Tensor:
        """``fn``'s float32 scores for one layer; raises ``InvalidScore`` for unusable ones."""
        scores = self._unchecked_scores(fn, name)
        low, high = torch.aminmax(scores)  # NaN propagates into both, inf into one
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidScore(f"non-finite scores in {name}")
        if low == high:
            raise InvalidScore(f"constant scores in {name}")
        return scores

    def _unchecked_scores(self, fn, name: str) -> torch.Tensor:
        weight = self.weight(name)
        leaves = {kind: value.float() for kind, value in self.stats.get(name, {}).items()}
        return torch.broadcast_to(fn(W=weight, **leaves), weight.shape)

    def masks(self, fn, scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The mask of every layer under ``fn`` (from ``scores`` when given); raises ``InvalidScore``."""
        with torch.no_grad():  # one layer's scores at a time unless the caller holds them all
            if scores is None and not self.on_cpu:
                return self._masks_one_read_back(fn)
            return {name: make_mask(scores[name] if scores else self.layer_scores(fn, name), self.sparsity_of[name],
                                    self.structure) for name in self.linears}

    def _masks_one_read_back(self, fn) -> dict[str, torch.Tensor]:
        """``masks`` for an accelerator, which waits for nothing until every layer's work is queued.

        Reading a flag back stalls the device: checking each layer's scores and its selection's ties on the
        spot costs up to three stalls per layer. Here both checks stay on the device and come back in one
        transfer per device; the layers whose selection was tied are then settled exactly, and an unusable
        score raises as ``layer_scores`` would.
        """
        masks, flags, thresholds = {}, [], {}
        for name in self.linears:
            scores = self._unchecked_scores(fn, name)
            low, high = torch.aminmax(scores)
            unusable = ~(torch.isfinite(low) & torch.isfinite(high)) | (low == high)
            if self.structure.unstructured:
                masks[name], thresholds[name], settled = selection(scores, self.sparsity_of[name])
            else:
                masks[name], settled = make_mask(scores, self.sparsity_of[name], self.structure), torch.ones_like(unusable)
            flags.append(torch.stack([unusable, ~settled]))
        read = dict(zip(self.linears, to_host(flags)))
        for name in (name for name, (unusable, _) in read.items() if unusable):
            self.layer_scores(fn, name)  # raises, with the reason
        for name in (name for name, (_, tied) in read.items() if tied):
            k = pruned_per_row(self.linears[name].weight.shape[-1], self.sparsity_of[name])
            masks[name] = ties_by_index(self._unchecked_scores(fn, name), thresholds[name], k)
        return masks

    @torch.no_grad()
    def recon_estimate(self, scores_of: Callable[[str], torch.Tensor], every: int) -> float:
        """``recon`` from every ``every``-th output row of each layer, given its scores ``scores_of(name)``.
        Masks are chosen within a row (or an N:M group of it), so those rows' masks are exact and only the
        average over rows is estimated; selecting one row in ``every`` costs about ``1/every`` of the full
        masks."""
        rows = slice(None, None, every)
        sums = [self._energy_sums(name, make_mask(scores_of(name)[rows], self.sparsity_of[name], self.structure), rows)
                for name in self.linears if "X" in self.stats.get(name, {})]
        return float(np.mean(_shares(sums))) if sums else -math.inf

    @torch.no_grad()
    def _energy_sums(self, name: str, mask: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``[Σ W²·X², Σ_pruned W²·X²]`` over a layer's ``rows`` (float32, on its device): the share pruned
        is its ``recon``."""
        # in place after the first product: a search pays this once per candidate, over every weight
        energy = self.weight(name)[rows].square().mul_(self.stats[name]["X"].float().square())
        total = energy.sum()
        return torch.stack([total, energy.mul_(mask).sum()])

    def reference_masks(self, expression: str) -> dict[str, torch.Tensor]:
        """The masks of ``expression`` (the current best, for the overlap proxy), kept until it changes."""
        if self._reference is None or self._reference[0] != expression:
            self._reference = (expression, self.masks(compile_tree(parse(expression))))
        return self._reference[1]

    @torch.no_grad()
    def proxy_values(self, masks: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None = None) -> dict:
        """``recon`` of ``masks``, and their ``overlap`` with the ``reference`` masks when given."""
        sums = [self._energy_sums(name, mask) for name, mask in masks.items() if "X" in self.stats.get(name, {})]
        values = {"recon": float(np.mean(_shares(sums)))} if sums else {}
        if reference is not None:
            counts = sum(to_host([torch.stack([mask.logical_and(reference[name]).sum(), mask.sum()])
                                  for name, mask in masks.items()])).tolist()
            values["overlap"] = counts[0] / max(counts[1], 1)
        return values

    def mask_hash(self, masks: dict[str, torch.Tensor]) -> str:
        return mask_fingerprint(masks, self.fingerprint)

    def _losses(self, first: int, count: int, loss: str) -> torch.Tensor:
        windows = self.windows[first:first + count]
        if loss == "kl":
            return window_kls(self.model, windows, self.dense_targets[first:first + count], self.batch_size)
        return window_nlls(self.model, windows, self.batch_size)

    @torch.no_grad()
    def perplexity_with(self, masks: dict[str, torch.Tensor], start: int = 0, stop: int | None = None,
                        race: Race | None = None, loss: str | None = None) -> tuple[torch.Tensor, bool]:
        """Per-window loss (``loss``, default the evaluator's: NLL or KL) on windows ``[start, stop)`` with
        ``masks`` applied, and whether it raced out. The dense weights are restored afterwards, whatever happens.
        """
        loss = loss or self.loss
        stop = len(self.windows) if stop is None else min(stop, len(self.windows))
        saved: dict[str, torch.Tensor] = {}
        try:
            for name, mask in masks.items():
                weight = self.linears[name].weight.data
                if self.dense is not None:  # a multiply by the kept positions is ~3× faster than masked_fill_
                    torch.mul(self.dense[name], mask.logical_not(), out=weight)
                else:
                    saved[name] = weight[mask]
                    weight.masked_fill_(mask, 0)
            if race is None:
                return self._losses(start, stop - start, loss), False
            nll: list[float] = []
            for first in range(start, stop, race.chunk):
                nll += self._losses(first, min(race.chunk, stop - first), loss).tolist()
                if race.lost(nll, start):
                    return torch.tensor(nll, dtype=torch.float64), True
            return torch.tensor(nll, dtype=torch.float64), False
        finally:
            self._restore(masks, saved)

    @torch.no_grad()
    def _restore(self, masks: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
        if self.dense is not None:
            for name, weight in self.dense.items():
                self.linears[name].weight.copy_(weight)
        for name, values in saved.items():
            self.linears[name].weight.data.masked_scatter_(masks[name], values)

    def evaluate(self, fn, known: dict[str, dict] | None = None, request: EvaluationRequest | None = None,
                 **settings) -> FitnessResult:
        """Fitness of ``fn`` as ``request`` says (``settings``: its fields, overriding it, e.g. ``race=...``).

        ``known`` maps mask fingerprints to earlier results (``{"fitness", "status"}``): a hit skips the forward.
        With a gate and ``gate_rows > 1``, an estimate above ``SAMPLED_GATE_FACTOR × gate`` skips the full
        masks too (such a candidate is not looked up in ``known``).
        """
        request = replace(request or EvaluationRequest(), **settings)
        start, stop, race, gate, gate_rows = request.start, request.stop, request.race, request.gate, request.gate_rows
        begin = time.perf_counter()
        try:
            if gate is not None and gate_rows > 1:
                # the CPU holds every layer's scores for the masks; elsewhere they are computed again, since
                # a 7B model's float32 scores would take 24 GiB
                held = {name: self.layer_scores(fn, name) for name in self.linears} if self.on_cpu else None
                scores_of = held.__getitem__ if held is not None else (lambda name: self.layer_scores(fn, name))
                estimate = self.recon_estimate(scores_of, gate_rows)
                if estimate > gate * SAMPLED_GATE_FACTOR:
                    reason = (f"recon estimate {estimate:.4g} (1 row in {gate_rows}) > {SAMPLED_GATE_FACTOR:g} × "
                              f"gate {gate:.4g}")
                    return FitnessResult(None, "gated", reason, seconds=time.perf_counter() - begin,
                                         proxies={"recon_sampled": estimate})
                masks = self.masks(fn, held)
                del held
            else:
                masks = self.masks(fn)
        except InvalidScore as err:
            return FitnessResult(None, "invalid", str(err), seconds=time.perf_counter() - begin)
        except Exception as err:  # a candidate must never stop the search
            where = traceback.format_exc(limit=-1).strip().splitlines()[-1]
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            return FitnessResult(None, "error", f"{reason} | {where}", seconds=time.perf_counter() - begin)
        digest = self.mask_hash(masks)
        reference = self.reference_masks(request.reference) if request.proxies and request.reference else None
        proxies = self.proxy_values(masks, reference) if request.proxies or gate is not None else {}
        if known is not None and digest in known:
            hit = known[digest]
            return FitnessResult(hit["fitness"], hit["status"], "mask cache", digest,
                                 time.perf_counter() - begin, proxies=proxies)
        if gate is not None and proxies.get("recon", -math.inf) > gate:
            return FitnessResult(None, "gated", f"recon proxy {proxies['recon']:.4g} > gate {gate:.4g}", digest,
                                 time.perf_counter() - begin, proxies=proxies)
        nll, raced = self.perplexity_with(masks, start, stop, race)
        ppl = math.exp(nll.mean().item())
        if not math.isfinite(ppl):
            return FitnessResult(None, "invalid", "non-finite perplexity", digest, time.perf_counter() - begin)
        status, reason = ("raced", f"raced out after {len(nll)} windows") if raced else ("ok", "")
        return FitnessResult(ppl, status, reason, digest, time.perf_counter() - begin, nll.tolist(), proxies)



def _shares(sums: list[torch.Tensor]) -> list[float]:
    """``pruned / total`` per layer from ``_energy_sums`` rows, in float64 as Python divides."""
    return [pruned / max(total, 1e-30) for total, pruned in (row.tolist() for row in to_host(sums))]
