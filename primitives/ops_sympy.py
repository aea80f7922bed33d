"""SymPy twins of the whole-matrix operators: opaque functions with the exact invariances they have.

``mms``, ``zsn`` and ``normalize`` act on the whole (out, in) matrix, so element-wise algebra cannot see
through them; they are SymPy ``Function`` classes whose ``eval`` applies only identities that hold exactly
in real arithmetic (the torch versions agree up to rounding):

* ``mms(a·x + b) = mms(x)`` and ``zsn(a·x + b) = zsn(x)`` for a number ``a > 0`` (any number ``b``);
  ``zsn(−x) = −zsn(x)``; ``mms(c) = zsn(c) = 0`` for a constant ``c``;
* ``normalize(a·x) = sign(a)·normalize(x)`` for a number ``a ≠ 0``;
* a positive affine whole-matrix map inside ``mms``/``zsn`` disappears (``mms(zsn(x)) = mms(x)``), and
  ``normalize(normalize(x)) = normalize(x)``;
* ``fro(x) = ‖x‖_F`` (the denominator of ``divnorm``) is a positive scalar with ``fro(a·x) = |a|·fro(x)``;
* ``rowrel``/``colrel`` (x over the L1 norm of its row/column) are odd, idempotent, ignore positive scalar
  factors and ``normalize`` inside them (``rowrel(a·x) = sign(a)·rowrel(x)``), and map a constant ``c`` to the
  scalar ``sign(c)·rowrel(1)`` (1/in; ``colrel(1)`` is 1/out).

"Constant" means a whole-matrix scalar: an expression without leaf symbols outside ``fro(...)``.
"""
from __future__ import annotations

import sympy as sp


def is_scalar(e: sp.Expr) -> bool:
    """True if ``e`` has the same value at every matrix position (numbers and ``fro(...)`` terms)."""
    if e.is_Number or isinstance(e, fro) or e in (sp.pi, sp.E):
        return True
    if isinstance(e, sp.Symbol):
        return False
    return bool(e.args) and all(is_scalar(a) for a in e.args)


def _affine(arg: sp.Expr) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """Split ``arg = a·core + b`` with ``a``, ``b`` scalar and ``core`` free of scalar factors/terms."""
    if isinstance(arg, sp.Add):
        b = sp.Add(*[t for t in arg.args if is_scalar(t)])
        rest = sp.Add(*[t for t in arg.args if not is_scalar(t)])
    else:
        b, rest = sp.S.Zero, arg
    if isinstance(rest, sp.Mul):
        a = sp.Mul(*[f for f in rest.args if is_scalar(f)])
        core = sp.Mul(*[f for f in rest.args if not is_scalar(f)])
    else:
        a, core = sp.S.One, rest
    return a, core, b


class _WholeMatrix(sp.Function):
    nargs = 1

    def _eval_is_extended_real(self):
        return True

    def _eval_is_finite(self):
        return True


class mms(_WholeMatrix):
    """Min-max scale over the whole matrix: values in [0, 1]."""

    @classmethod
    def eval(cls, x):
        if is_scalar(x):
            return sp.S.Zero
        if isinstance(x, (mms, zsn, normalize)):
            return cls(x.args[0])
        a, core, b = _affine(x)
        if a.is_positive and (a != 1 or b != 0):
            return cls(core)
        if a.is_negative and (a != -1 or b != 0):
            return cls(-core)
        return None

    def _eval_is_extended_nonnegative(self):
        return True


class zsn(_WholeMatrix):
    """Z-score over the whole matrix (population standard deviation)."""

    @classmethod
    def eval(cls, x):
        if is_scalar(x):
            return sp.S.Zero
        if isinstance(x, (mms, zsn, normalize)):
            return cls(x.args[0])
        a, core, b = _affine(x)
        if a.is_positive and (a != 1 or b != 0):
            return cls(core)
        if a.is_negative:
            return -cls(core)
        if x.could_extract_minus_sign():
            return -cls(-x)
        return None


def _scaled_out(cls, x):
    """``cls(a·core)`` as ``cls(core)`` for a positive constant ``a`` and ``−cls(core)`` for a negative one
    (an odd function that ignores positive scaling), or ``None`` (leave it unevaluated)."""
    if isinstance(x, sp.Mul):
        a, core, _ = _affine(x)
        if a.is_positive and a != 1:
            return cls(core)
        if a.is_negative:
            return -cls(core)
    if x.could_extract_minus_sign():
        return -cls(-x)
    return None


class normalize(_WholeMatrix):
    """x / ‖x‖_F over the whole matrix."""

    @classmethod
    def eval(cls, x):
        if x == 0:
            return sp.S.Zero
        if isinstance(x, normalize):
            return x
        return _scaled_out(cls, x)

    def _eval_is_extended_nonnegative(self):
        return True if self.args[0].is_nonnegative else None


class _Relative(_WholeMatrix):
    """x / Σ|x| along each row (``rowrel``) or column (``colrel``) of the broadcast (out, in) matrix."""

    @classmethod
    def eval(cls, x):
        if x == 0:
            return sp.S.Zero
        if isinstance(x, cls):
            return x  # each line of the result already has L1 norm 1 (or is all zero)
        if isinstance(x, normalize):
            return cls(x.args[0])  # normalize(x) is x times a positive whole-matrix scalar
        if is_scalar(x):
            # a constant matrix c: sign(c)/in (rowrel) or sign(c)/out (colrel) everywhere, itself a scalar
            if x.is_positive and x != 1:
                return cls(sp.S.One)
            return -cls(sp.S.One) if x.is_negative else None
        return _scaled_out(cls, x)

    def _eval_is_extended_nonnegative(self):
        return True if self.args[0].is_nonnegative else None

    def _eval_is_extended_positive(self):
        return True if self.args[0].is_positive else None


class rowrel(_Relative):
    """x / Σ_row |x|: a positive scaling of each row (order within a row is kept)."""


class colrel(_Relative):
    """x / Σ_col |x|: a positive scaling of each column."""


class fro(_WholeMatrix):
    """The Frobenius norm ‖x‖_F (a positive scalar; the torch side floors it at EPS)."""

    @classmethod
    def eval(cls, x):
        if x == 0:
            return EPS_RATIONAL  # the torch side floors the norm at EPS
        if isinstance(x, normalize):
            return sp.S.One
        a, core, b = _affine(x)
        if b == 0 and a != 1 and (a.is_positive or a.is_negative):
            return sp.Abs(a) * cls(core)
        if x.could_extract_minus_sign():
            return cls(-x)
        return None

    def _eval_is_extended_positive(self):
        return True


#: EPS of the torch guards as an exact rational, for twins of expressions that are identically zero.
EPS_RATIONAL = sp.Rational(1, 10**30)


def is_nonneg_real(e: sp.Expr) -> bool:
    """``e >= 0``, knowing that every twin expression is real (SymPy alone often cannot tell)."""
    if e.is_nonnegative:
        return True
    if e.is_Number:
        return bool(e >= 0)
    if isinstance(e, (sp.Abs, sp.exp, mms, fro)):
        return True
    if e.is_Pow:
        return bool((e.exp.is_Integer and e.exp % 2 == 0) or is_nonneg_real(e.base))
    if e.is_Mul or e.is_Add:
        return all(is_nonneg_real(a) for a in e.args)
    if isinstance(e, (sp.tanh, normalize, rowrel, colrel)):
        return is_nonneg_real(e.args[0])
    return False


def abs_real(x: sp.Expr) -> sp.Expr:
    """|x| for a real ``x``: dropped on nonnegative terms, split over products and integer powers."""
    if is_nonneg_real(x):
        return x
    if x.is_Mul:
        return sp.Mul(*(abs_real(f) for f in x.args))
    if x.is_Pow and x.exp.is_Integer:
        return abs_real(x.base) ** x.exp
    if x.could_extract_minus_sign():
        return abs_real(-x)
    return sp.Abs(x)


def log(x: sp.Expr) -> sp.Expr:
    """log|x|; at an identically zero argument the torch guard's value log(EPS) (not −∞)."""
    if x == 0:
        return sp.log(EPS_RATIONAL)
    if isinstance(x, sp.exp):
        return x.args[0]  # log|exp(y)| = y for real y, which SymPy cannot always prove
    return sp.log(abs_real(x))


def sqrt(x: sp.Expr) -> sp.Expr:
    """sqrt|x|."""
    return sp.sqrt(abs_real(x))


def div(x: sp.Expr, y: sp.Expr) -> sp.Expr:
    """x / y; for an identically zero y the torch guard's x / EPS (not ∞)."""
    return x / EPS_RATIONAL if y == 0 else x / y


def sigmoid(x: sp.Expr) -> sp.Expr:
    """The logistic function, written out so SymPy can do algebra with it."""
    return 1 / (1 + sp.exp(-x))


#: SymPy functions that are strictly monotone (used by the rank key): name → "inc" | "inc_nonneg".
MONOTONE = {sp.exp: "inc", sp.tanh: "inc", sp.atan: "inc", sp.sinh: "inc", sp.asinh: "inc", sp.erf: "inc",
            sp.log: "inc_nonneg", mms: "inc", zsn: "inc", normalize: "inc"}
