"""Calibration statistics for every prunable Linear, computed once and cached as safetensors.

Scales (fixed, so that a metric mixing leaves means the same thing on every run):

* ``X`` (shape ``(1, in)``): ``sqrt(Σ_tokens x_j² / n_windows)`` — Wanda's ``scaler_row`` square-rooted:
  the L2 norm of input channel j over the calibration tokens, divided by ``sqrt(n_windows)`` so it does
  not grow with the number of calibration windows.
* ``G`` (shape ``(out, in)``): per-weight gradient norm over calibration windows, one window per backward
  pass of the causal-LM loss (mean token NLL of that window). ``l2``: ``sqrt(Σ_n g_n²)`` (GBLM-Pruner's
  default); ``l1``: ``Σ_n |g_n|``. Only the chosen norm is computed and kept.
* ``R`` (shape ``(out, in)``): Wanda++'s regional gradient, ``g_n = ∂‖block(x_n)‖₂/∂W`` for the decoder
  block holding the Linear (Frobenius norm of the block's output on window n, dense inputs), computed
  block by block, never by a full-model backward. ``l2``: ``sqrt(Σ_n g_n² / N)``; ``l1``: ``Σ_n |g_n| / N``
  (averaged over the N windows, like ``X``, so it does not grow with N). ``grad_norm`` picks it as for ``G``.

Every statistic accumulates in float32 on its layer's own device, whatever the model's dtype and however
it is spread over devices; ``devices.statistic_dtype`` says how ``G`` and ``R`` are then stored.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .devices import input_device, model_dtype, statistic_dtype
from .models import block_linears, cache_dir, layout, model_fingerprint, prunable_linears

Statistics = dict[str, dict[str, torch.Tensor]]  # layer name -> {"X": ..., "G": ...}


class BlockInputs:
    """Hidden states entering one decoder block, plus the keyword arguments the model passed to it.

    Capturing the inputs of block 0 once and pushing them block by block lets statistics and
    sequential pruning stream one block at a time, whatever the architecture's block signature.
    """

    class _Stop(Exception):
        pass

    def __init__(self, model, windows: torch.Tensor, batch_size: int = 8):
        device = input_device(model)
        self.hidden: list[torch.Tensor] = []
        self.kwargs: list[dict] = []

        def grab(_module, args, kwargs):
            self.hidden.append(args[0].detach() if args else kwargs.pop("hidden_states").detach())
            self.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            raise self._Stop

        handle = layout(model).blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                for batch in windows.split(batch_size):
                    try:
                        model(batch.to(device), use_cache=False)
                    except self._Stop:
                        pass
        finally:
            handle.remove()

    @torch.no_grad()
    def forward(self, block, keep: bool = True) -> None:
        """Run the block on the held inputs; with ``keep`` its outputs become the next block's inputs.

        ``keep=False`` only runs it (for forward hooks that observe its Linear layers).
        """
        for i, (hidden, kwargs) in enumerate(zip(self.hidden, self.kwargs)):
            out = block(hidden, **kwargs)
            if keep:
                self.hidden[i] = out[0] if isinstance(out, tuple) else out


@contextmanager
def linear_hooks(linears: dict[str, torch.nn.Linear], hook_for, pre: bool = True):
    """Register ``hook_for(name)`` on every Linear while the context is open: a forward pre-hook
    ``(module, args)``, or with ``pre=False`` a forward hook ``(module, args, output)``."""
    register = "register_forward_pre_hook" if pre else "register_forward_hook"
    handles = [getattr(linear, register)(hook_for(name)) for name, linear in linears.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def activation_norm_hooks(linears: dict[str, torch.nn.Linear]):
    """Accumulate ``Σ x²`` per input channel of each Linear while the context is open.

    Yields a dict filled with ``{name: sum of squares (in,)}`` and the token count seen.
    """
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sq = (x * x).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
        return hook

    with linear_hooks(linears, hook_for):
        yield sums


def norms_from_sums(sums: dict[str, torch.Tensor], n_windows: int) -> dict[str, torch.Tensor]:
    return {name: torch.sqrt(s / n_windows).unsqueeze(0) for name, s in sums.items()}


def activation_norms(model, windows: torch.Tensor, batch_size: int = 8, progress: bool = True):
    """``X`` for every prunable Linear, streaming the dense model one block at a time."""
    parts = layout(model)
    inputs = BlockInputs(model, windows, batch_size)
    result = {}
    for i, block in enumerate(tqdm(parts.blocks, desc="activation norms", disable=not progress)):
        with activation_norm_hooks(parts.block_linears[i]) as sums:
            inputs.forward(block)
        result.update({parts.name(i, n): x for n, x in norms_from_sums(sums, len(windows)).items()})
    return result


def gradient_norms(model, windows: torch.Tensor, norm: str = "l2", progress: bool = True) -> dict[str, torch.Tensor]:
    """``G`` per prunable Linear: ``sqrt(Σ g²)`` (``l2``) or ``Σ|g|`` (``l1``), one window per backward pass.

    Each weight's gradient is folded into its float32 accumulator as soon as the backward has produced it
    and then freed, so the gradients of the whole model are never held at once (for LLaMA-7B in bfloat16
    that is 12 GiB saved).
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"gradient norm must be l1 or l2, got {norm!r}")
    linears = prunable_linears(model)
    device = input_device(model)
    sums = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in linears.items()}

    def fold_for(name):
        def fold(weight):
            g = weight.grad.float()
            sums[name].add_(g.abs() if norm == "l1" else g * g)
            weight.grad = None
        return fold

    trainable = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    for name, linear in linears.items():
        linear.weight.requires_grad_(True)
        handles.append(linear.weight.register_post_accumulate_grad_hook(fold_for(name)))
    try:
        for window in tqdm(windows, desc="gradients", disable=not progress):
            ids = window.unsqueeze(0).to(device)
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return sums if norm == "l1" else {n: v.sqrt_() for n, v in sums.items()}


def _atomic_save(tensors: dict[str, torch.Tensor], path, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _cached(kind: str, model, windows, spec: dict, compute, use_cache: bool):
    """Load ``kind`` statistics from the cache, or compute and store them."""
    if not use_cache:  # no key needed: fingerprinting a 7B model's weights is not free
        return compute(), False
    key_doc = {"kind": kind, "model": model_fingerprint(model), "text": spec,
               "windows": hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "stats" / f"{kind}-{key}.safetensors"
    if path.is_file():
        return load_file(path), True
    tensors = compute()
    _atomic_save(tensors, path, {"key": json.dumps(key_doc, sort_keys=True)})
    return tensors, False


def compute_statistics(model, windows: torch.Tensor, spec: dict, needs=("X", "G"), grad_norm: str = "l2",
                       use_cache: bool = True, progress: bool = True) -> tuple[Statistics, dict]:
    """Statistics named in ``needs`` for every prunable Linear, plus a record of where they came from.

    Returns ``(stats, info)`` where ``stats[layer]["X" | "G" | "R"]`` are tensors on that layer's device (``X``
    in float32, ``G`` and ``R`` as ``devices.statistic_dtype`` says) and ``info`` says the text spec, the
    gradient norm and which kinds were cache hits.
    """
    linears = prunable_linears(model)
    stats: Statistics = {name: {} for name in linears}
    stored = statistic_dtype(model_dtype(model))
    info = {"text": spec, "grad_norm": grad_norm, "cache_hits": []}
    if "X" in needs:
        tensors, hit = _cached("X", model, windows, spec,
                               lambda: activation_norms(model, windows, progress=progress), use_cache)
        for name, x in tensors.items():
            stats[name]["X"] = x.to(linears[name].weight.device)
        info["cache_hits"] += ["X"] if hit else []
    if "G" in needs:
        tensors, hit = _cached("G", model, windows, {**spec, "norm": grad_norm},
                               lambda: gradient_norms(model, windows, grad_norm, progress=progress), use_cache)
        for name in list(tensors):  # popped as converted: a float32 copy of the model is not held twice
            stats[name]["G"] = tensors.pop(name).to(linears[name].weight.device, stored)
        info["cache_hits"] += ["G"] if hit else []
    if "R" in needs:
        def compute():
            norms = regional_gradient_norms(model, windows, progress=progress)
            return {f"{name}::{norm}": t for norm, d in norms.items() for name, t in d.items()}
        tensors, hit = _cached("R", model, windows, spec, compute, use_cache)
        for name in stats:
            stats[name]["R"] = tensors[f"{name}::{grad_norm}"].to(linears[name].weight.device, stored)
        info["cache_hits"] += ["R"] if hit else []
    return stats, info

# ---------------------------------------------------------------- R: Wanda++'s regional gradients
# Per-window gradients come from one backward per *batch*: a window's output depends only on that window,
# so ``g_n = δ_nᵀ x_n`` from the Linear's input and output gradient.

def output_tensor(out) -> torch.Tensor:
    """A block's hidden states, whether it returns them alone or first in a tuple."""
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
            out = output_tensor(block(x, **kwargs))
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
    parts = layout(model)
    inputs = BlockInputs(model, windows, batch_size)
    result: dict[str, dict[str, torch.Tensor]] = {"l1": {}, "l2": {}}
    for i, block in enumerate(tqdm(parts.blocks, desc="regional gradients", disable=not progress)):
        norms, outputs = regional_gradients(block, inputs)
        inputs.hidden = outputs  # the dense block's outputs are the next block's inputs
        for local, d in norms.items():
            for kind in result:
                result[kind][parts.name(i, local)] = d[kind]
    return result
