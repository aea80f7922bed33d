"""BESA (Xu et al., ICLR 2024): learned sparsity allocation inside each decoder block, weights frozen.

Per block, every Linear ``l`` (or, with ``per_row=True``, every row of it) gets a learnable distribution
over candidate sparsities ``d_c ∈ {0, 0.01, …, 1}``: ``p = softmax(sigmoid(θ))`` (BESA's "sigmoid smooth",
logits initialised to zero, so training starts from rate 0.5). The rate is ``s = Σ_c p_c d_c``.
Within a row, weights are ranked by any pruner's ``score`` (Wanda by default, or a discovered metric):
the weight of rank ``r`` (0 = lowest score) is kept with probability ``P_r = Σ_c p_c [r ≥ ⌊in·d_c⌋]``.
The forward uses the hard mask "prune the ``⌊in·s⌋`` lowest" with the straight-through gradient of
``P`` (``mask = hard + P − stop_grad(P)``). The loss is BESA's blockwise reconstruction error
``Σ((y − ŷ)/‖y_channel‖)² / hidden`` (``y``: the dense block's output on the block's current inputs,
each output channel normalised by its norm over the batch) plus ``β·((s_block − target)/target)²`` with
``s_block`` the parameter-weighted mean rate.

After training, the learned rates are shifted by one constant (bisection) so that the block meets the
target exactly, and per-row prune counts are rounded by largest remainder so the block's sparsity is the
target to within one weight (the paper's penalty alone only approaches it).

Paper budget: 128 windows × 2048 tokens, 1 epoch, batch 1, Prodigy optimiser. Defaults here (CPU):
the calibration windows given (16 × 512 in the CLI), ``epochs=2``, batch 1, Adam with ``lr=0.05``
(Prodigy is not in torch; 0.05 is a few times the reference code's AdamW 1e-2 because there are fewer
steps). Unstructured only: with N:M every layer's rate is fixed at N/M, so there is nothing to allocate.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from .apply import checked_scores
from .masks import MaskError, Structure
from .blockwise import BlockStep
from .pruners import Pruner, RankedBlockwisePruner, Wanda
from .stats import output_tensor


def candidate_rates(step: float = 0.01) -> torch.Tensor:
    """Candidate sparsities ``0, step, …, 1``."""
    n = round(1 / step)
    return torch.arange(n + 1, dtype=torch.float32) / n


def row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each weight within its row (0 = lowest score, stable ties: lower index first)."""
    order = torch.sort(scores, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def project_counts(rates: list[torch.Tensor], widths: list[int], target: float) -> list[torch.Tensor]:
    """Integer prune counts per row whose total is ``round(target · #weights)``.

    ``rates[l]`` is ``(rows,)`` for layer ``l`` of input width ``widths[l]``. One shift ``c`` (bisection)
    makes ``Σ_rows in·clamp(rate + c, 0, 1)`` hit the target, then the largest remainders get the
    leftover units, so relative allocations are kept and the block total is exact.
    """
    total = sum(r.numel() * w for r, w in zip(rates, widths))
    want = round(target * total)

    def pruned(c: float) -> float:
        return sum(((r + c).clamp(0, 1) * w).sum().item() for r, w in zip(rates, widths))

    lo, hi = -1.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pruned(mid) < want else (lo, mid)
    exact = [((r + hi).clamp(0, 1) * w).double() for r, w in zip(rates, widths)]
    counts = [e.floor().long() for e in exact]
    missing = want - sum(int(c.sum()) for c in counts)
    remainders = torch.cat([(e - c.double()) for e, c in zip(exact, counts)])
    room = torch.cat([c < w for c, w in zip(counts, widths)])
    remainders[~room] = -1.0  # a full row cannot take another unit
    if missing > 0:
        flat = torch.cat(counts)
        flat[torch.sort(remainders, descending=True, stable=True).indices[:missing]] += 1
        counts = list(flat.split([c.numel() for c in counts]))
    return counts


class BESA(RankedBlockwisePruner):
    """BESA's learned allocation over any within-row ranking; target met exactly per block.

    Args:
        score: pruner whose ``score`` ranks weights within each row (default Wanda; any discovered metric).
        per_row: learn one rate per row instead of one per layer.
        epochs: passes over the calibration windows per block (paper: 1 over 128 windows).
        lr: Adam learning rate for the allocation logits.
        beta: weight of the sparsity penalty (paper: 1).
        rate_step: spacing of the candidate sparsities (paper: 0.01).
        samples: windows used for learning (default: all calibration windows).
        batch_size: windows per optimiser step (paper: 1).
    """

    def __init__(self, score: Pruner | None = None, per_row: bool = False, epochs: int = 2, lr: float = 0.05,
                 beta: float = 1.0, rate_step: float = 0.01, samples: int | None = None, batch_size: int = 1):
        super().__init__(score if score is not None else Wanda())
        self.per_row, self.epochs, self.lr, self.beta = per_row, epochs, lr, beta
        self.rate_step, self.samples, self.batch_size = rate_step, samples, batch_size
        self.name = "besa" if self.ranking.name == "wanda" else f"besa ({self.ranking.name})"

    def check(self, structure: Structure) -> None:
        if not structure.unstructured:
            raise MaskError(f"BESA allocates unstructured sparsity; with {structure} every layer is fixed at "
                            f"{structure.sparsity:g}, use the score pruner directly")

    def prune_block(self, step: BlockStep) -> None:
        device = next(iter(step.linears.values())).weight.device
        d = candidate_rates(self.rate_step).to(device)
        layers = {}
        for n, linear in step.linears.items():
            W = linear.weight.detach()
            ranks = row_ranks(checked_scores(self.ranking, W.float(), step.stats[n], f"{step.prefix}.{n}"))
            cols = W.shape[1]
            # below[c, r] = 1 when rank r is pruned at candidate rate d_c
            below = (torch.arange(cols, device=device).unsqueeze(0) < (d * cols).floor().unsqueeze(1)).float()
            logits = torch.zeros((W.shape[0] if self.per_row else 1, len(d)), device=device, requires_grad=True)
            layers[n] = {"W": W, "ranks": ranks, "below": below, "logits": logits}
        sizes = {n: layer["W"].numel() for n, layer in layers.items()}
        total = sum(sizes.values())
        optimiser = torch.optim.Adam([layer["logits"] for layer in layers.values()], lr=self.lr)
        n_batches = len(step.inputs.hidden) if self.samples is None else \
            min(len(step.inputs.hidden), -(-self.samples // self.batch_size))
        losses = []
        for _ in range(self.epochs):
            for b in range(n_batches):
                with torch.enable_grad():
                    weights, block_rate = {}, 0.0
                    for n, layer in layers.items():
                        rate, mask = self._soft_mask(layer, d)
                        weights[f"{n}.weight"] = layer["W"] * mask.to(layer["W"].dtype)
                        block_rate = block_rate + rate.mean() * sizes[n] / total
                    out = output_tensor(functional_call(step.block, weights, (step.inputs.hidden[b],),
                                                  step.inputs.kwargs[b])).float()
                    y = step.targets[b].float()
                    scale = y.reshape(-1, y.shape[-1]).norm(dim=0).clamp_min(1e-8)  # per output channel
                    recon = (((y - out) / scale) ** 2).sum() / y.shape[-1]
                    loss = recon + self.beta * ((block_rate - step.sparsity) / step.sparsity) ** 2
                    grads = torch.autograd.grad(loss, [layer["logits"] for layer in layers.values()])
                for layer, g in zip(layers.values(), grads):
                    layer["logits"].grad = g
                optimiser.step()
                losses.append(recon.item())
        with torch.no_grad():
            rates = {n: (torch.sigmoid(layer["logits"]).softmax(-1) @ d).expand(layer["W"].shape[0])
                     for n, layer in layers.items()}
            counts = project_counts(list(rates.values()), [layer["W"].shape[1] for layer in layers.values()],
                                    step.sparsity)
            for (n, layer), k in zip(layers.items(), counts):
                prune = layer["ranks"] < k.unsqueeze(1)
                step.linears[n].weight.data.masked_fill_(prune, 0)
        step.info = {"learned_rates": {n: round(r.mean().item(), 4) for n, r in rates.items()},
                     "recon_first": losses[0] if losses else None, "recon_last": losses[-1] if losses else None}

    @staticmethod
    def _soft_mask(layer: dict, d: torch.Tensor):
        """Rates per row and the straight-through keep mask of one layer."""
        p = torch.sigmoid(layer["logits"]).softmax(-1)  # (rows or 1, candidates)
        rate = p @ d
        ranks = layer["ranks"]
        cols = ranks.shape[1]
        hard = (ranks >= (rate.detach() * cols).floor().unsqueeze(1)).float()
        keep_prob = 1 - p @ layer["below"]  # (rows or 1, cols) by rank
        soft = keep_prob.expand(ranks.shape[0], -1).gather(1, ranks)
        return rate, hard + soft - soft.detach()

    def describe(self):
        return {**super().describe(), "score": self.ranking.describe(), "per_row": self.per_row,
                "epochs": self.epochs, "lr": self.lr, "beta": self.beta, "rate_step": self.rate_step,
                "samples": self.samples, "batch_size": self.batch_size}
