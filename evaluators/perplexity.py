"""Perplexity under Wanda's protocol, with the protocol carried in the result.

Protocol: the split's rows joined with ``"\\n\\n"``, one BOS at the start, non-overlapping windows of
``seqlen`` tokens from the start (the tail shorter than a window dropped), perplexity = exp of the mean
next-token NLL over every predicted token (``seqlen − 1`` per window, no context carried across windows).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .devices import input_device


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    tokens: int
    window_nll: list[float]  # mean NLL of each window, in window order
    protocol: dict

    def __str__(self) -> str:
        p = self.protocol
        return (f"perplexity {self.perplexity:.3f} ({p.get('source')} {p.get('split')}, seqlen {p.get('seqlen')}, "
                f"{p.get('n_windows')} windows, {self.tokens} predicted tokens)")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, batch_size: int = 4, progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window (float64, shape ``(n_windows,)``)."""
    device = input_device(model)
    out = []
    for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
        targets = batch[:, 1:].to(logits.device)  # under a device map the logits come out on the last GPU
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              reduction="none").view(batch.shape[0], -1)
        out.append(nll.double().mean(1).cpu())
    return torch.cat(out)


def perplexity(model, windows: torch.Tensor, protocol: dict, batch_size: int = 4,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows``; ``protocol`` describes them (see ``data.TextSpec``)."""
    nll = window_nlls(model, windows, batch_size, progress)
    mean = nll.mean().item()  # every window predicts the same number of tokens
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean,
                            tokens=windows.shape[0] * (windows.shape[1] - 1),
                            window_nll=nll.tolist(), protocol=dict(protocol))


@torch.no_grad()
def dense_log_probs(model, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """The model's next-token log-probabilities on ``windows``, float16, shape ``(n, seqlen − 1, vocab)``, on
    the device its logits come out on: the targets of ``window_kls``, computed once while it is dense."""
    device = input_device(model)
    out = []
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch.to(device), use_cache=False).logits[:, :-1]
        out.append(F.log_softmax(logits.float(), dim=-1).half())
    return torch.cat(out)


@torch.no_grad()
def window_kls(model, windows: torch.Tensor, targets: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Mean next-token KL divergence ``KL(dense ‖ model)`` of each window (float64, shape ``(n_windows,)``),
    given the dense log-probabilities ``targets`` of the same windows (``dense_log_probs``).

    The targets are stored in float16, so the dense model itself scores within ±1e-4 of 0, not exactly 0.
    """
    device = input_device(model)
    out = []
    for batch, dense in zip(windows.split(batch_size), targets.split(batch_size)):
        logits = model(input_ids=batch.to(device), use_cache=False).logits[:, :-1]
        log_q = F.log_softmax(logits.float(), dim=-1)
        log_p = dense.to(log_q.device).float()
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        out.append(kl.double().mean(1).cpu())
    return torch.cat(out)
