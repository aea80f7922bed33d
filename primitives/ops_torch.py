"""Total torch implementations of the built-in operators (finite in, finite out).

Each function allocates its result and only then works in place on it, so inputs are never modified.
``nan_to_num_()`` with its defaults maps ±inf to ±``finfo(dtype).max`` (and NaN, which finite inputs never
produce here, to 0); it is the overflow guard of the arithmetic operators.
"""
from __future__ import annotations

import math

import torch

from .registry import EPS, EXP_MAX


def sqr(x: torch.Tensor) -> torch.Tensor:
    """x·x, overflow → finfo.max."""
    return torch.square(x).nan_to_num_()


def neg(x: torch.Tensor) -> torch.Tensor:
    """−x."""
    return torch.neg(x)


def abs_(x: torch.Tensor) -> torch.Tensor:
    """|x|."""
    return torch.abs(x)


def log(x: torch.Tensor) -> torch.Tensor:
    """log(max(|x|, EPS))."""
    return x.abs().clamp_min_(EPS).log_()


def exp(x: torch.Tensor) -> torch.Tensor:
    """exp(min(x, EXP_MAX))."""
    return x.clamp(max=EXP_MAX).exp_()


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(|x|)."""
    return x.abs().sqrt_()


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x)."""
    return torch.tanh(x)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(−x))."""
    return torch.sigmoid(x)


def mms(x: torch.Tensor) -> torch.Tensor:
    """(x − min) / (max − min) over the whole tensor; a constant tensor gives zeros."""
    lo, hi = torch.aminmax(x)
    # max − min overflows only if the values span more than finfo.max; halving (exact for normal floats)
    # then keeps every intermediate finite. The scale is a 0-dim tensor so nothing syncs with the device.
    s = torch.where(torch.isinf(hi - lo), 0.5, 1.0).to(x.dtype)
    den = hi * s - lo * s
    den = torch.where(den > 0, den, torch.inf)  # constant tensor → 0 / inf = 0
    return torch.addcmul(-(lo * s), x, s).div_(den)


# Magnitudes for which sums of squares of ~1e8 float32 values neither overflow nor underflow.
_SAFE_LO, _SAFE_HI = 1e-12, 1e12


def _scaled(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(y, constant)``: ``x`` divided by max|x| when its magnitude is outside the safe range (the
    whole-matrix operators below are scale invariant), and whether ``x`` is constant. Reads two scalars
    back from the device."""
    lo, hi = torch.aminmax(x)
    lo_, hi_ = lo.item(), hi.item()
    m = max(-lo_, hi_)
    if lo_ == hi_ or m == 0.0:
        return x, True
    return (x if _SAFE_LO <= m <= _SAFE_HI else x / m), False


def zsn(x: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over the whole tensor (population std); a constant tensor gives zeros."""
    y, constant = _scaled(x)
    if constant:
        return torch.zeros_like(x)
    d = y - y.mean()
    sd = torch.linalg.vector_norm(d) / math.sqrt(d.numel())
    return d.div_(torch.where(sd > 0, sd, torch.inf))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖_F over the whole tensor; an all-zero tensor gives zeros."""
    y, constant = _scaled(x)
    if constant and not x.any():
        return torch.zeros_like(x)
    n = torch.linalg.vector_norm(y)
    return y / torch.where(n > 0, n, 1.0)


def _relative(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x / Σ|x| along ``dim`` (−1: within each row, −2: within each column); an all-zero line gives zeros.

    A line whose max|x| is outside [_SAFE_LO, _SAFE_HI] is first divided by that max (the ratio is scale
    invariant), so the sum neither overflows nor underflows; other lines are divided by 1, which is exact,
    so they get exactly ``x / x.abs().sum(dim)``. Nothing is read back from the device.
    """
    if x.dim() < 2:  # a vector is one row: each of its columns holds one value
        return _relative(x.reshape(1, -1), dim).reshape(x.shape)
    m = x.abs().amax(dim=dim, keepdim=True)
    y = x / torch.where((m > 0) & ((m < _SAFE_LO) | (m > _SAFE_HI)), m, 1.0)
    den = y.abs().sum(dim=dim, keepdim=True)
    return y.div_(torch.where(den > 0, den, 1.0))


def rowrel(x: torch.Tensor) -> torch.Tensor:
    """x / Σ_row |x| (each value relative to its row's L1 norm); an all-zero row gives zeros."""
    return _relative(x, -1)


def colrel(x: torch.Tensor) -> torch.Tensor:
    """x / Σ_col |x| (each value relative to its column's L1 norm); an all-zero column gives zeros."""
    return _relative(x, -2)


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y, overflow → ±finfo.max."""
    return torch.add(x, y).nan_to_num_()


def sub(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x − y, overflow → ±finfo.max."""
    return torch.sub(x, y).nan_to_num_()


def mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x · y, overflow → ±finfo.max."""
    return torch.mul(x, y).nan_to_num_()


def div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x / (sign(y)·max(|y|, EPS)), sign(±0) = +1, overflow → ±finfo.max."""
    d = div_denominator(y)
    return torch.div(x, d).nan_to_num_()


def divnorm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x / clamp(‖y‖_F, EPS, finfo.max) (Pruner-Zero's div), overflow → ±finfo.max."""
    # float64 accumulation: ‖y‖² of float32 values cannot overflow there.
    n = torch.linalg.vector_norm(y, dtype=torch.float64).clamp(EPS, torch.finfo(x.dtype).max).to(x.dtype)
    return torch.div(x, n).nan_to_num_()


# In-place twins used by the compiler on temporaries it owns (never on leaves): same results, fewer
# allocations. Each must equal its out-of-place function bit for bit.
INPLACE_UNARY = {
    sqr: lambda t: t.square_().nan_to_num_(),
    neg: lambda t: t.neg_(),
    abs_: lambda t: t.abs_(),
    log: lambda t: t.abs_().clamp_min_(EPS).log_(),
    exp: lambda t: t.clamp_(max=EXP_MAX).exp_(),
    sqrt: lambda t: t.abs_().sqrt_(),
    tanh: lambda t: t.tanh_(),
    sigmoid: lambda t: t.sigmoid_(),
}
#: Element-wise binary operators as ``torch`` functions accepting ``out=`` (then ``nan_to_num_``).
BINARY_OUT = {add: torch.add, sub: torch.sub, mul: torch.mul, div: torch.div}


def div_denominator(y: torch.Tensor) -> torch.Tensor:
    """The guarded denominator of :func:`div` (a new tensor): sign(y)·max(|y|, EPS) with both zeros positive.

    Not ``copysign``: ``0 * (negative)`` is ``-0.0`` in torch, and a sign bit that SymPy cannot see must not
    decide the sign of ``x / 0``.
    """
    return torch.where(y < 0, y.clamp(max=-EPS), y.clamp(min=EPS))
