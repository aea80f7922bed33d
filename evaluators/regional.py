"""Wanda++: its RGS score and Regional Optimisation (RO), on top of the block-wise driver.

Wanda++ (Yang et al., ACL 2025) works inside one decoder block at a time ("region"):

* **Regional gradient** ``R``: for window ``n``, ``g_n = ∂‖f(x_n)‖₂ / ∂W`` where ``f`` is the decoder block,
  ``x_n`` its input hidden states and ``‖·‖₂`` the Frobenius norm of the block's output for that window.
  Only the block is differentiated, never the whole model. Scale (fixed, like ``X``):
  ``l2 = sqrt(Σ_n g_n² / N)`` (default), ``l1 = Σ_n |g_n| / N`` over the ``N`` calibration windows, so the
  value does not grow with ``N``. Computed in ``stats.py`` (``regional_gradients``) with the other statistics.
* **RGS score** ``S = (α·R + X) · |W|`` with ``α = 100``.
* **RO**: with the mask fixed, the block's remaining Linear weights are updated (RMSprop) to minimise the
  mean squared error between the dense block's output and the pruned block's output on a few windows.
  Wanda++ runs K rounds of prune → optimise and a final prune (the scores of the updated weights can swap
  which weights survive; the final prune restores the exact sparsity).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .blockwise import block_outputs, mask_block
from .models import block_linears
from .pruners import Pruner, RankedBlockwisePruner
from .stats import BlockInputs, output_tensor


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
    sequential_batch = 4  # windows per backward of the regional gradients (memory), as Wanda++ runs it

    def score(self, W, stats):
        return (self.alpha * stats["R"] + stats["X"]) * W.abs()

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
            out = output_tensor(functional_call(block, weights, (inputs.hidden[b],), inputs.kwargs[b]))
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

