"""The block-by-block driver: for methods that need a decoder block's own, current inputs.

``prune_blockwise`` serves Wanda++'s regional optimisation, SparseGPT, BESA and every score pruner run
sequentially (``pruners.SequentialScore``, what ``Pruner.prune(sequential=True)`` runs): it captures the inputs of block 0, and for each block measures what
the method needs on the *current* inputs (outputs of the already-pruned blocks) with the dense block, lets the
method prune the block, then pushes the inputs through the pruned block.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .allocation import Allocation, block_sparsity, target_sparsity
from .apply import Calibration, PruneReport, checked_scores
from .masks import Structure, make_mask, resolve_sparsity
from .models import layout
from .stats import (BlockInputs, activation_norm_hooks, compute_statistics, linear_hooks, norms_from_sums,
                    output_tensor, regional_gradients)

LOCAL_KINDS = ("X", "R", "H")  # measured per block on its current inputs by prune_blockwise
OWN_KINDS = ("Y", "H")  # not cached statistics: dense block outputs ("Y") and input Hessians ("H")


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
    return [output_tensor(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.kwargs)]


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


def prune_blockwise(model, method, calibration: Calibration | None, sparsity: float | Allocation,
                    structure: Structure, progress: bool = True) -> PruneReport:
    """Prune every decoder block in order with ``method.prune_block(step)`` (always block-sequential).

    ``method`` has ``name``, ``needs`` (leaves its score uses, plus ``"Y"`` for dense block outputs and
    ``"H"`` for input Hessians ``2/N·Σ x xᵀ``), ``grad_norm``, ``batch_size`` and ``prune_block``.
    ``X``, ``R`` and ``H`` are measured on the block's current inputs with the dense block; other kinds
    (``G``) come from ``compute_statistics`` on the dense model, cached.
    """
    if calibration is None:
        raise ValueError(f"{method.name} works block by block on calibration windows; pass a Calibration")
    allocation = sparsity if isinstance(sparsity, Allocation) else None
    target = target_sparsity(sparsity)
    target, structure = resolve_sparsity(target if structure.unstructured else None, structure)  # N:M decides
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
    parts = layout(model)
    seconds = {"statistics": time.perf_counter() - t0, "scoring_and_masking": 0.0}
    layer_sparsity, per_block = {}, {}
    for i, block in enumerate(tqdm(parts.blocks, desc=f"pruning ({method.name})", disable=not progress)):
        s0 = time.perf_counter()
        linears = parts.block_linears[i]
        want = {k: k in needs for k in ("X", "R", "H", "Y")}
        targets = None
        with activation_norm_hooks(linears if want["X"] else {}) as xsums, \
                hessian_hooks(linears if want["H"] else {}) as hsums:
            if want["R"]:
                rnorms, targets = regional_gradients(block, inputs)
            elif any(want.values()):
                targets = block_outputs(block, inputs)
        local = {parts.name(i, n): dict(stats.get(parts.name(i, n), {})) for n in linears}
        for n in linears:
            entry = local[parts.name(i, n)]
            if want["X"]:
                entry["X"] = norms_from_sums({n: xsums[n]}, n_windows)[n]
            if want["R"]:
                entry["R"] = rnorms[n][grad_norm]
            if want["H"]:
                entry["H"] = hsums[n] * (2.0 / n_windows)  # SparseGPT's scale; only its condition matters
        step = BlockStep(i, f"{parts.prefix}.{i}", block, linears, inputs,
                         {n: local[parts.name(i, n)] for n in linears},
                         targets if want["Y"] else None, block_sparsity(allocation or target, i), structure)
        s1 = time.perf_counter()
        method.prune_block(step)
        s2 = time.perf_counter()
        inputs.forward(block)  # the pruned block's outputs feed the next block
        seconds["statistics"] += (s1 - s0) + (time.perf_counter() - s2)
        seconds["scoring_and_masking"] += s2 - s1
        for n, linear in linears.items():
            layer_sparsity[parts.name(i, n)] = (linear.weight == 0).float().mean().item()
        if step.info:
            per_block[step.prefix] = step.info
    sizes = {name: linear.weight.numel() for name, linear in parts.linears.items()}
    zeros = sum(layer_sparsity[name] * size for name, size in sizes.items())
    statistics = {**info, "needs": list(needs), "mode": "block-sequential (current inputs, dense block)"}
    if per_block:
        statistics["blocks"] = per_block
    seconds["total"] = time.perf_counter() - t0
    return PruneReport(method=method.name, sparsity=target, structure=str(structure), sequential=True,
                       layer_sparsity=layer_sparsity, overall_sparsity=zeros / sum(sizes.values()),
                       statistics=statistics, seconds=seconds,
                       allocation=allocation.describe() if allocation else None)


def mask_block(step: BlockStep, pruner, weights: dict[str, torch.Tensor] | None = None) -> dict:
    """Score every Linear of the block with ``pruner`` (any ``Pruner``) and zero its mask; returns the masks.

    ``weights`` (default: the current ones) are what is scored and masked into the Linear.
    """
    masks = {}
    with torch.no_grad():
        for n, linear in step.linears.items():
            w = linear.weight.data if weights is None else weights[n]
            masks[n] = make_mask(checked_scores(pruner, w, step.stats[n], f"{step.prefix}.{n}"),
                                 step.sparsity, step.structure, pruner.group)
            linear.weight.data.copy_(w.masked_fill(masks[n], 0))
    return masks
