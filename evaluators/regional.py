"""Block-by-block pruning: regional gradients, Wanda++'s RGS score and Regional Optimisation (RO).

Wanda++ (Yang et al., ACL 2025) works inside one decoder block at a time ("region"):

* **Regional gradient** ``R``: for window ``n``, ``g_n = ∂‖f(x_n)‖₂ / ∂W`` where ``f`` is the decoder block,
  ``x_n`` its input hidden states and ``‖·‖₂`` the Frobenius norm of the block's output for that window.
  Only the block is differentiated, never the whole model. Scale (fixed, like ``X``):
  ``l2 = sqrt(Σ_n g_n² / N)`` (default), ``l1 = Σ_n |g_n| / N`` over the ``N`` calibration windows, so the
  value does not grow with ``N``. Per-window gradients come from one backward per *batch*: a window's
  output depends only on that window, so ``g_n = δ_nᵀ x_n`` from the Linear's input and output gradient.
* **RGS score** ``S = (α·R + X) · |W|`` with ``α = 100``.
* **RO**: with the mask fixed, the block's remaining Linear weights are updated (RMSprop) to minimise the
  mean squared error between the dense block's output and the pruned block's output on a few windows.
  Wanda++ runs K rounds of prune → optimise and a final prune (the scores of the updated weights can swap
  which weights survive; the final prune restores the exact sparsity).

``prune_blockwise`` is the shared driver for methods that need a block's own inputs (RO, SparseGPT, BESA,
sequential RGS): it captures the inputs of block 0, and for each block measures what the method needs on
the *current* inputs (outputs of the already-pruned blocks), lets the method prune the block, then pushes
the inputs through the pruned block.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm.auto import tqdm

from .apply import Calibration, PruneReport, checked_scores, prune_model
from .masks import Structure, check_sparsity, make_mask
from .models import block_linears, decoder_blocks, prunable_linears
from .pruners import Pruner
from .stats import BlockInputs, activation_norm_hooks, compute_statistics, linear_hooks, norms_from_sums

LOCAL_KINDS = ("X", "R", "H")  # measured per block on its current inputs by prune_blockwise
OWN_KINDS = ("Y", "H")  # not cached statistics: dense block outputs ("Y") and input Hessians ("H")


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def _linear_io(linears: dict[str, torch.nn.Linear]):
    """Record ``(input, output)`` of every call of each Linear while open (outputs keep their graph)."""
    seen: dict[str, list] = {}

    def hook_for(name):
        def hook(_module, args, out):
            seen.setdefault(name, []).append((args[0].detach(), out))
        return hook

    with linear_hooks(linears, hook_for, pre=False):
        yield seen


def regional_gradients(block, inputs: BlockInputs) -> tuple[dict[str, dict[str, torch.Tensor]], list[torch.Tensor]]:
    """Regional gradient norms of every Linear weight of ``block`` on the windows held by ``inputs``.

    Returns ``({layer: {"l1": ..., "l2": ...}}, outputs)``: the aggregated norms (scale in the module
    docstring) and the block's outputs per batch (the forward is shared, so they come for free).
    """
    linears = block_linears(block)
    sums: dict[str, list[torch.Tensor]] = {}  # layer -> [Σ|g|, Σg²]
    outputs, n_windows = [], 0
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
        batch = hidden.shape[0]
        with _linear_io(linears) as seen, torch.enable_grad():
            x = hidden.detach().requires_grad_(True)
            out = _output(block(x, **kwargs))
            loss = out.float().flatten(1).norm(dim=1).sum()  # Σ_n ‖f(x_n)‖: window n's gradient is its own
            calls = [(name, pair) for name, pairs in seen.items() for pair in pairs]
            deltas = torch.autograd.grad(loss, [pair[1] for _, pair in calls])
        grouped: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for (name, (xin, _)), delta in zip(calls, deltas):
            grouped.setdefault(name, []).append((delta.reshape(batch, -1, delta.shape[-1]).float(),
                                                 xin.reshape(batch, -1, xin.shape[-1]).float()))
        for name, pairs in grouped.items():
            for n in range(batch):
                # one contiguous (out, in) product per window, accumulated in place: a (batch, out, in)
                # tensor reduced over its first dim costs twice the block's backward on a memory-bound CPU
                g = pairs[0][0][n].T @ pairs[0][1][n]  # δ_nᵀ x_n
                for d, x in pairs[1:]:  # a Linear called twice in one forward
                    g.addmm_(d[n].T, x[n])
                if name in sums:
                    sums[name][1].addcmul_(g, g)
                    sums[name][0].add_(g.abs_())
                else:
                    sums[name] = [g.abs(), g.square()]
        outputs.append(out.detach())
        n_windows += batch
    norms = {n: {"l1": s1.div_(n_windows), "l2": s2.div_(n_windows).sqrt_()} for n, (s1, s2) in sums.items()}
    return norms, outputs


def regional_gradient_norms(model, windows: torch.Tensor, batch_size: int = 2,
                            progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{"l1": {layer: R}, "l2": {layer: R}}`` for every prunable Linear of the dense model, one block at a time."""
    blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    inputs = BlockInputs(model, windows, batch_size)
    result: dict[str, dict[str, torch.Tensor]] = {"l1": {}, "l2": {}}
    for i, block in enumerate(tqdm(blocks, desc="regional gradients", disable=not progress)):
        norms, outputs = regional_gradients(block, inputs)
        inputs.hidden = outputs  # the dense block's outputs are the next block's inputs
        for local, d in norms.items():
            for kind in result:
                result[kind][f"{prefix}.{i}.{local}"] = d[kind]
    return result


@contextmanager
def hessian_hooks(linears: dict[str, torch.nn.Linear]):
    """Accumulate ``Σ x xᵀ`` (float32, ``(in, in)``) over the tokens seen by each Linear while open."""
    sums: dict[str, torch.Tensor] = {}
    last: list = [None, None]  # q/k/v (and gate/up) read the same tensor: reuse its product

    def hook_for(name):
        def hook(_module, args):
            if args[0] is not last[0]:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                last[:] = [args[0], x.T @ x]
            sums[name] = sums[name] + last[1] if name in sums else last[1].clone()
        return hook

    with linear_hooks(linears, hook_for):
        yield sums


@torch.no_grad()
def block_outputs(block, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's outputs for each held batch (the inputs are not replaced)."""
    return [_output(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.kwargs)]


@dataclass
class BlockStep:
    """What a block-level method sees for one decoder block (``stats`` and ``targets`` per its needs)."""

    index: int
    prefix: str  # full module name of the block, e.g. "model.layers.3"
    block: torch.nn.Module
    linears: dict[str, torch.nn.Linear]
    inputs: BlockInputs  # outputs of the already-pruned blocks before this one
    stats: dict[str, dict[str, torch.Tensor]]  # local layer name -> {"X", "R", "H", "G", ...}
    targets: list[torch.Tensor] | None  # the dense block's outputs on ``inputs``, per batch ("Y")
    sparsity: float
    structure: Structure
    info: dict = field(default_factory=dict)  # per-block facts the method wants in the report


def prune_blockwise(model, method, calibration: Calibration | None, sparsity: float, structure: Structure,
                    progress: bool = True) -> PruneReport:
    """Prune every decoder block in order with ``method.prune_block(step)`` (always block-sequential).

    ``method`` has ``name``, ``needs`` (leaves its score uses, plus ``"Y"`` for dense block outputs and
    ``"H"`` for input Hessians ``2/N·Σ x xᵀ``), ``grad_norm``, ``batch_size`` and ``prune_block``.
    ``X``, ``R`` and ``H`` are measured on the block's current inputs with the dense block; other kinds
    (``G``) come from ``compute_statistics`` on the dense model, cached.
    """
    if calibration is None:
        raise ValueError(f"{method.name} works block by block on calibration windows; pass a Calibration")
    sparsity = structure.sparsity if not structure.unstructured else check_sparsity(sparsity)
    needs = tuple(method.needs)
    grad_norm = getattr(method, "grad_norm", "l2")
    t0 = time.perf_counter()
    cached = tuple(k for k in needs if k not in LOCAL_KINDS + OWN_KINDS)
    stats, info = ({}, {"text": calibration.spec, "grad_norm": grad_norm, "cache_hits": []})
    if cached:
        stats, info = compute_statistics(model, calibration.windows, calibration.spec, cached, grad_norm,
                                         calibration.use_cache, progress)
    inputs = BlockInputs(model, calibration.windows, getattr(method, "batch_size", 4))
    n_windows = len(calibration.windows)
    blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    seconds = {"statistics": time.perf_counter() - t0, "scoring_and_masking": 0.0}
    layer_sparsity, per_block = {}, {}
    for i, block in enumerate(tqdm(blocks, desc=f"pruning ({method.name})", disable=not progress)):
        s0 = time.perf_counter()
        linears = block_linears(block)
        want = {k: k in needs for k in ("X", "R", "H", "Y")}
        targets = None
        with activation_norm_hooks(linears if want["X"] else {}) as xsums, \
                hessian_hooks(linears if want["H"] else {}) as hsums:
            if want["R"]:
                rnorms, targets = regional_gradients(block, inputs)
            elif any(want.values()):
                targets = block_outputs(block, inputs)
        local = {f"{prefix}.{i}.{n}": dict(stats.get(f"{prefix}.{i}.{n}", {})) for n in linears}
        for n in linears:
            entry = local[f"{prefix}.{i}.{n}"]
            if want["X"]:
                entry["X"] = norms_from_sums({n: xsums[n]}, n_windows)[n]
            if want["R"]:
                entry["R"] = rnorms[n][grad_norm]
            if want["H"]:
                entry["H"] = hsums[n] * (2.0 / n_windows)  # SparseGPT's scale; only its condition matters
        step = BlockStep(i, f"{prefix}.{i}", block, linears, inputs,
                         {n: local[f"{prefix}.{i}.{n}"] for n in linears},
                         targets if want["Y"] else None, sparsity, structure)
        s1 = time.perf_counter()
        method.prune_block(step)
        s2 = time.perf_counter()
        inputs.forward(block)  # the pruned block's outputs feed the next block
        seconds["statistics"] += (s1 - s0) + (time.perf_counter() - s2)
        seconds["scoring_and_masking"] += s2 - s1
        for n, linear in linears.items():
            layer_sparsity[f"{prefix}.{i}.{n}"] = (linear.weight == 0).float().mean().item()
        if step.info:
            per_block[step.prefix] = step.info
    sizes = {name: linear.weight.numel() for name, linear in prunable_linears(model).items()}
    zeros = sum(layer_sparsity[name] * size for name, size in sizes.items())
    statistics = {**info, "needs": list(needs), "mode": "block-sequential (current inputs, dense block)"}
    if per_block:
        statistics["blocks"] = per_block
    seconds["total"] = time.perf_counter() - t0
    return PruneReport(method=method.name, sparsity=sparsity, structure=str(structure), sequential=True,
                       layer_sparsity=layer_sparsity, overall_sparsity=zeros / sum(sizes.values()),
                       statistics=statistics, seconds=seconds)


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
        return prune_blockwise(model, self, calibration, sparsity, structure, progress)


def mask_block(step: BlockStep, pruner: Pruner, weights: dict[str, torch.Tensor] | None = None) -> dict:
    """Score every Linear of the block with ``pruner`` and zero its mask; returns the masks.

    ``weights`` (default: the current ones) are what is scored and masked into the Linear.
    """
    masks = {}
    with torch.no_grad():
        for n, linear in step.linears.items():
            w = linear.weight.data if weights is None else weights[n]
            masks[n] = make_mask(checked_scores(pruner, w, step.stats[n], f"{step.prefix}.{n}"),
                                 step.sparsity, step.structure)
            linear.weight.data.copy_(w.masked_fill(masks[n], 0))
    return masks


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


class _Sequential(BlockwisePruner):
    """Any score pruner run block-sequentially with ``X`` and ``R`` measured on the current inputs."""

    def __init__(self, pruner: Pruner, batch_size: int = 4):
        self.pruner, self.name, self.needs = pruner, pruner.name, tuple(pruner.needs)
        self.grad_norm, self.batch_size = getattr(pruner, "grad_norm", "l2"), batch_size

    def prune_block(self, step):
        mask_block(step, self.pruner)


@dataclass
class RGS(Pruner):
    """Wanda++'s regional-gradient score ``(α·R + X)·|W|``.

    One-shot (default): ``X`` and ``R`` from the dense model, cached (``compute_statistics``).
    ``sequential=True``: both measured block by block on the outputs of the already-pruned blocks.
    """

    alpha: float = 100.0
    grad_norm: str = "l2"
    name: str = "rgs"
    needs: tuple[str, ...] = ("X", "R")

    def score(self, W, stats):
        return (self.alpha * stats["R"] + stats["X"]) * W.abs()

    def prune(self, model, calibration=None, sparsity=0.5, structure=Structure(), sequential=False,
              progress=True) -> PruneReport:
        if sequential:
            return prune_blockwise(model, _Sequential(self), calibration, sparsity, structure, progress)
        return prune_model(model, self, calibration, sparsity, structure, False, progress)

    def describe(self):
        return {**super().describe(), "alpha": self.alpha, "grad_norm": self.grad_norm}


def reconstruction_error(block, inputs: BlockInputs, targets: list[torch.Tensor], batches: int | None = None) -> float:
    """Mean squared error between ``targets`` and the block's outputs over the first ``batches`` batches."""
    errors = [F.mse_loss(out.float(), t.float()).item()
              for out, t in zip(block_outputs(block, inputs)[:batches], targets[:batches])]
    return sum(errors) / len(errors)


def batches_for(inputs: BlockInputs, samples: int | None) -> int:
    """How many leading batches of ``inputs`` hold at least ``samples`` windows (all when ``None``)."""
    if samples is None:
        return len(inputs.hidden)
    sizes = [h.shape[0] for h in inputs.hidden]
    return next((k + 1 for k in range(len(sizes)) if sum(sizes[:k + 1]) >= samples), len(sizes))


def regional_optimisation(block, inputs: BlockInputs, masks: dict[str, torch.Tensor], targets: list[torch.Tensor],
                          samples: int | None = 4, steps: int | None = None, lr: float = 1e-4) -> list[float]:
    """Regional Optimisation: update the unmasked weights of ``block``'s Linears, mask fixed.

    Minimises ``mean((targets − block(x))²)`` over the first ``samples`` windows of ``inputs`` with RMSprop
    (one step per batch, ``steps`` defaulting to one pass). Usable after any pruner's masking: ``targets``
    are the dense block's outputs (``block_outputs`` before masking). Writes ``W ⊙ ¬mask`` back into the
    Linears (pruned entries exactly zero, master copy in float32) and returns the loss of every step.
    """
    linears = {n: m for n, m in block_linears(block).items() if n in masks}
    keep = {n: (~masks[n]).float() for n in linears}
    params = {n: (m.weight.detach().float() * keep[n]).requires_grad_(True) for n, m in linears.items()}
    optimiser = torch.optim.RMSprop(list(params.values()), lr=lr)
    n_batches = batches_for(inputs, samples)
    losses = []
    for k in range(steps if steps is not None else n_batches):
        b = k % n_batches
        with torch.enable_grad():
            weights = {f"{n}.weight": (params[n] * keep[n]).to(linears[n].weight.dtype) for n in linears}
            out = _output(functional_call(block, weights, (inputs.hidden[b],), inputs.kwargs[b]))
            loss = F.mse_loss(out.float(), targets[b].float())
            # autograd.grad, not backward: the block's other parameters must not collect .grad
            grads = torch.autograd.grad(loss, list(params.values()))
        for p, g in zip(params.values(), grads):
            p.grad = g
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        for n, linear in linears.items():
            linear.weight.copy_((params[n] * keep[n]).to(linear.weight.dtype))
    return losses


class RegionalOptimised(RankedBlockwisePruner):
    """Any score pruner followed by Wanda++'s Regional Optimisation, block by block.

    Per block: statistics once on the dense block; then ``rounds`` times: score the current weights, mask,
    optimise the kept weights (mask fixed); finally score again and prune to the exact sparsity. Pruned
    weights keep their previous values between rounds so a later round can bring them back.

    Args:
        score: the pruner whose ``score`` picks the masks (RGS for Wanda++; any discovered metric).
        rounds: K prune → optimise rounds (paper: 5).
        samples: windows RO trains on (paper: 32 of 128; default 4 to stay cheap on CPU).
        steps: optimiser steps per round (default: one pass over ``samples``, one step per batch).
        lr: RMSprop learning rate (paper: 3e-7; at this small step budget 3e-7 changes a SmolLM2 block's
            error by <1%, 1e-4 lowers it by ~25% on held-out windows, see the README's block-wise baselines section).
        batch_size: windows per batch for statistics and RO steps.
    """

    def __init__(self, score: Pruner | None = None, rounds: int = 5, samples: int = 4, steps: int | None = None,
                 lr: float = 1e-4, batch_size: int = 2, name: str | None = None):
        super().__init__(score if score is not None else RGS())
        self.rounds, self.samples, self.steps, self.lr, self.batch_size = rounds, samples, steps, lr, batch_size
        self.name = name or f"{self.ranking.name}+ro"

    def prune_block(self, step):
        current = {n: linear.weight.detach().clone() for n, linear in step.linears.items()}
        before = after = None
        for _ in range(self.rounds):
            masks = mask_block(step, self.ranking, current)
            losses = regional_optimisation(step.block, step.inputs, masks, step.targets, self.samples,
                                           self.steps, self.lr)
            before = losses[0] if before is None else before
            after = losses[-1]
            with torch.no_grad():
                for n, linear in step.linears.items():
                    current[n] = torch.where(masks[n], current[n], linear.weight)
        mask_block(step, self.ranking, current)
        if before is not None:
            step.info = {"ro_first_loss": before, "ro_last_loss": after}

    def describe(self):
        return {**super().describe(), "score": self.ranking.describe(), "rounds": self.rounds,
                "samples": self.samples, "steps": self.steps, "lr": self.lr}


def wanda_plus_plus(ro: bool = True, alpha: float = 100.0, grad_norm: str = "l2", rounds: int = 5,
                    samples: int = 4, lr: float = 1e-4) -> Pruner:
    """Wanda++: RGS + Regional Optimisation (``ro=False``: the RGS score alone, ``wanda++ (rgs)``)."""
    rgs = RGS(alpha=alpha, grad_norm=grad_norm, name="wanda++ (rgs)" if not ro else "rgs")
    if not ro:
        return rgs
    return RegionalOptimised(rgs, rounds=rounds, samples=samples, lr=lr, name="wanda++")

