"""The built-in leaves (W, X, G) and operators (Pruner-Zero's set plus sigmoid, normalize and divnorm)."""
from __future__ import annotations

import sympy as sp

from . import ops_sympy as S
from . import ops_torch as T
from .registry import _register_builtin, register_leaf

register_leaf("W", "the Linear weight itself, signed, shape (out, in)", nonnegative=False, shape="(out, in)")
register_leaf("X", "per-input-channel activation L2 norm ‖X_j‖₂ over the calibration tokens, shape (1, in), "
                   "broadcast over rows", nonnegative=True, shape="(1, in)")
register_leaf("G", "per-weight gradient norm over calibration samples, sqrt(Σ_n g_n²), shape (out, in)",
              nonnegative=True, shape="(out, in)")

_register_builtin(
    "sqr", 1, T.sqr, lambda x: x**2, latex=r"{0}^{{2}}", precedence=4,
    torch_doc="square(x).nan_to_num_()  (overflow → finfo.max)", description="square",
    nonnegative=True, even=True, increasing_nonneg=True, inverse_of="sqrt", inverse_gives="abs")
_register_builtin(
    "neg", 1, T.neg, lambda x: -x, latex=r"-{0}", precedence=3,
    torch_doc="neg(x)", description="negation",
    decreasing=True, inverse_of="neg", inverse_gives="x", exact_inverse=True)
_register_builtin(
    "abs", 1, T.abs_, S.abs_real, latex=r"\left|{0}\right|",
    torch_doc="abs(x)", description="absolute value",
    nonnegative=True, even=True, idempotent=True, increasing_nonneg=True)
_register_builtin(
    "log", 1, T.log, S.log, latex=r"\log\left|{0}\right|",
    torch_doc="log(max(|x|, EPS)),  EPS = 1e-30", description="guarded logarithm of the magnitude",
    even=True, increasing_nonneg=True, inverse_of="exp", inverse_gives="x")
_register_builtin(
    "exp", 1, T.exp, sp.exp, latex=r"\exp\left({0}\right)",
    torch_doc="exp(min(x, 88))", description="exponential with clamped input",
    nonnegative=True, increasing=True, inverse_of="log", inverse_gives="abs")
_register_builtin(
    "sqrt", 1, T.sqrt, S.sqrt, latex=r"\sqrt{{\left|{0}\right|}}",
    torch_doc="sqrt(|x|)", description="square root of the magnitude",
    nonnegative=True, even=True, increasing_nonneg=True, inverse_of="sqr", inverse_gives="abs")
_register_builtin(
    "tanh", 1, T.tanh, sp.tanh, latex=r"\tanh\left({0}\right)",
    torch_doc="tanh(x)", description="hyperbolic tangent",
    increasing=True, preserves_nonneg=True)
_register_builtin(
    "sigmoid", 1, T.sigmoid, S.sigmoid, latex=r"\sigma\left({0}\right)",
    torch_doc="sigmoid(x) = 1 / (1 + exp(-x))", description="logistic function",
    increasing=True, nonnegative=True)
_register_builtin(
    "mms", 1, T.mms, S.mms, latex=r"\operatorname{{mms}}\left({0}\right)",
    torch_doc="(x - min x) / (max x - min x) over the whole tensor, as addcmul(-lo*s, x, s) / (hi*s - lo*s) "
              "with s = 0.5 if max - min overflows else 1; constant tensor → 0",
    description="min-max scale to [0, 1] over the whole matrix",
    nonnegative=True, increasing=True, idempotent=True, whole_matrix=True)
_register_builtin(
    "zsn", 1, T.zsn, S.zsn, latex=r"\operatorname{{zsn}}\left({0}\right)",
    torch_doc="y = x, or x / max|x| if max|x| is outside [1e-12, 1e12]; d = y - mean(y); "
              "d / (‖d‖_F / sqrt(numel)) over the whole tensor (population std); constant tensor → 0",
    description="z-score over the whole matrix",
    increasing=True, idempotent=True, whole_matrix=True)
_register_builtin(
    "normalize", 1, T.normalize, S.normalize, latex=r"\frac{{{0}}}{{\left\|{0}\right\|_F}}",
    torch_doc="y = x, or x / max|x| if max|x| is outside [1e-12, 1e12]; y / ‖y‖_F (= x / ‖x‖_F without "
              "overflow or underflow); zero tensor → 0",
    description="divide by the Frobenius norm of the whole matrix",
    increasing=True, preserves_nonneg=True, idempotent=True, whole_matrix=True)
_register_builtin(
    "rowrel", 1, T.rowrel, S.rowrel, latex=r"\frac{{{0}}}{{\left\|{0}\right\|_{{1,\mathrm{{row}}}}}}",
    torch_doc="y = x, or x / max_row|x| for a row whose max|x| is outside [1e-12, 1e12]; y / Σ_row|y| "
              "(= x / Σ_row|x|) on the broadcast (out, in) matrix; all-zero row → 0",
    description="each value relative to the L1 norm of its row (RIA's relative importance, row part)",
    preserves_nonneg=True, idempotent=True, increasing_in_row=True, whole_matrix=True)
_register_builtin(
    "colrel", 1, T.colrel, S.colrel, latex=r"\frac{{{0}}}{{\left\|{0}\right\|_{{1,\mathrm{{col}}}}}}",
    torch_doc="y = x, or x / max_col|x| for a column whose max|x| is outside [1e-12, 1e12]; y / Σ_col|y| "
              "(= x / Σ_col|x|) on the broadcast (out, in) matrix; all-zero column → 0",
    description="each value relative to the L1 norm of its column (RIA's relative importance, column part)",
    preserves_nonneg=True, idempotent=True, whole_matrix=True)
_register_builtin(
    "add", 2, T.add, lambda x, y: x + y, latex=r"{0} + {1}", infix="+", precedence=1,
    torch_doc="(x + y).nan_to_num_()  (overflow → ±finfo.max)", description="addition",
    commutative=True, preserves_nonneg=True)
_register_builtin(
    "sub", 2, T.sub, lambda x, y: x - y, latex=r"{0} - {1}", infix="-", precedence=1,
    torch_doc="(x - y).nan_to_num_()  (overflow → ±finfo.max)", description="subtraction",
    self_value=0.0, exact_self=True)
_register_builtin(
    "mul", 2, T.mul, lambda x, y: x * y, latex=r"{0} \cdot {1}", infix="*", precedence=2,
    torch_doc="(x * y).nan_to_num_()  (overflow → ±finfo.max)", description="multiplication",
    commutative=True, preserves_nonneg=True)
_register_builtin(
    "div", 2, T.div, S.div, latex=r"\frac{{{0}}}{{{1}}}", infix="/", precedence=2,
    torch_doc="(x / where(y < 0, min(y, -EPS), max(y, EPS))).nan_to_num_(),  EPS = 1e-30 (±0 count as positive)",
    description="element-wise division with a sign-preserving guarded denominator",
    preserves_nonneg=True, self_value=1.0)
_register_builtin(
    "divnorm", 2, T.divnorm, lambda x, y: x / S.fro(y), latex=r"\frac{{{0}}}{{\left\|{1}\right\|_F}}",
    torch_doc="(x / clamp(‖y‖_F, EPS, finfo.max)).nan_to_num_(), norm accumulated in float64",
    description="Pruner-Zero's div: x divided by the Frobenius norm of the whole matrix y",
    preserves_nonneg=True, whole_matrix=True)
