"""Canonical keys (algebraic equality) and rank keys (equality of the masks a score induces).

``canonical_key``: OOS (:func:`primitives.simplify_tree`), then the SymPy twin, expanded
(``sympy.expand``: distributes products, multinomials, ``exp`` of sums, and log/power rules where SymPy's
assumptions allow), printed with SymPy's deterministic ordering. Trees that are equal in real arithmetic
(ignoring the guards) mostly get equal keys (commutativity, associativity, like terms, cancellation); a key
is never shared by trees that differ in real arithmetic. Expansion is skipped for a product whose expansion
would exceed ``MAX_TERMS`` terms (the key is then still correct, only less eager to merge).

``rank_key``: masks only depend on the order of the scores inside each row (or N:M group), so the twin is
stripped, at the root and repeatedly, of strictly monotone maps, first on the unexpanded twin (where the
tree's own wrappers are visible) and then on its expanded form:

* increasing maps are dropped: ``exp tanh sigmoid mms zsn normalize`` (and registered operators with
  ``increasing=True``), ``rowrel`` (a positive scaling of each row: ``increasing_in_row``), positive factors
  and additive constants, including whole-matrix scalars such as
  ``‖y‖_F``, odd powers, and ``log``, ``sqrt`` and positive powers of a nonnegative score;
* even maps become ``|x|``: ``x**2`` → ``|x|``;
* decreasing maps are dropped while flipping a sign that stays in the key (``-(...)``): ``neg``, negative
  factors, negative powers of a nonnegative score; ``neg`` is never treated as order preserving;
* a product of nonnegative factors is replaced by the sum of their logs: one normal form for ``X*|W|``,
  ``X**2*W**2``, ``sqrt(X*|W|)`` and ``-1/(X*|W|)``; a key that is such a pure log-sum is printed as the
  product again (``X*Abs(W)``, ``-(X*Abs(W))``);
* a root that does not strip is retried after ``factor_terms`` and, for small sums, ``factor``.

A constant score has rank key ``"0"``; a twin that SymPy cannot evaluate (``zoo``) keeps its tree as key.
"""
from __future__ import annotations

import functools
import math

import sympy as sp

from . import registry
from .ops_sympy import MONOTONE, abs_real, is_nonneg_real, is_scalar
from .registry import OPERATORS
from .simplify import simplify_node
from .sympy_bridge import function_map, node_to_sympy
from .nodes import Node, to_node
from .trees import TreeLike, as_tree, node_string

MAX_TERMS = 400
MAX_FACTOR_TERMS = 12


def _terms(e: sp.Expr) -> int:
    """Upper bound of the number of terms of ``e`` after expanding its top level."""
    if e.is_Add:
        return sum(_terms(a) for a in e.args)
    if e.is_Mul:
        return math.prod(_terms(a) for a in e.args)
    if e.is_Pow and e.exp.is_Integer and e.exp > 0:
        t = _terms(e.base)
        return math.comb(t + int(e.exp) - 1, int(e.exp))
    return 1


_BAD = (sp.zoo, sp.nan, sp.oo, -sp.oo)


def _degenerate(e: sp.Expr) -> bool:
    return any(e.has(b) for b in _BAD)


def _clean_abs(e: sp.Expr) -> sp.Expr:
    """Rewrite every ``Abs`` with :func:`abs_real` (SymPy leaves some it cannot prove redundant)."""
    return e.replace(sp.Abs, abs_real) if e.has(sp.Abs) else e


def _expand(e: sp.Expr) -> sp.Expr:
    if all(_terms(s) <= MAX_TERMS for s in sp.preorder_traversal(e) if isinstance(s, sp.Expr)):
        expanded = _clean_abs(sp.expand(e))
    else:
        expanded = _clean_abs(sp.expand(e, mul=False, multinomial=False))
    # Expansion can reveal a zero inside log or a denominator, where SymPy says zoo but the torch guard
    # gives a finite value; the unexpanded form is then the safer key.
    return e if _degenerate(expanded) else expanded


@functools.lru_cache(maxsize=65536)
def _canonical(node: Node, version: int) -> sp.Expr:
    simplified = simplify_node(node)
    e = node_to_sympy(simplified)
    if _degenerate(e):
        # A degenerate twin must not merge with anything else: the simplified tree is its own key.
        return sp.Symbol("tree:" + node_string(simplified))
    return _expand(e)


def canonical_sympy(tree: TreeLike) -> sp.Expr:
    """The canonical SymPy expression behind :func:`canonical_key`."""
    return _canonical(to_node(as_tree(tree)), registry.registry_version())


def canonical_key(tree: TreeLike) -> str:
    """A stable string, equal for algebraically equal trees (``mul(W, X)``/``mul(X, W)``,
    ``add(W, W)``/``mul(2, W)``), e.g. ``"X*Abs(W)"``. See the module docstring."""
    return sp.sstr(canonical_sympy(tree), order=None)


def _monotone(e: sp.Expr) -> str | None:
    kind = MONOTONE.get(e.func)
    if kind is None:
        name = function_map().get(e.func)
        op = OPERATORS.get(name) if name else None
        if op is not None and op.arity == 1:
            # increasing_in_row (rowrel) keeps every row's order, and masks only compare within a row
            kind = "inc" if op.increasing or op.increasing_in_row else "inc_nonneg" if op.increasing_nonneg else (
                "dec" if op.decreasing else None)
    return kind


def _common_power(e: sp.Expr) -> sp.Expr | None:
    """For a product of odd powers with a common odd exponent q (``W**3*X**3``), the base product ``b``
    such that ``e = b**q``; ``None`` if there is none. (Nonnegative products are handled through logs.)"""
    pairs = [f.as_base_exp() for f in e.args]
    if not all(ex.is_Integer for _, ex in pairs):
        return None
    q = math.gcd(*(int(ex) for _, ex in pairs))
    if q <= 1 or q % 2 == 0:
        return None
    return sp.Mul(*(b ** (ex / q) for b, ex in pairs))


def _log_of(f: sp.Expr) -> sp.Expr:
    """log f for a nonnegative twin expression, split over products, powers and exponentials."""
    if isinstance(f, sp.exp):
        return f.args[0]
    if f.is_Mul:
        return sp.Add(*(_log_of(a) for a in f.args))
    if f.is_Pow:
        base, ex = f.as_base_exp()
        return ex * _log_of(base if is_nonneg_real(base) else abs_real(base))
    if f.is_Add:
        pulled = sp.factor_terms(f)  # 1/2 + y/2 → (1 + y)/2: the constant factor becomes a log term
        if pulled.is_Mul:
            return _log_of(pulled)
    return sp.log(f)


def _split_logs(e: sp.Expr) -> sp.Expr:
    """Rewrite every log of a nonnegative expression with :func:`_log_of` (SymPy's ``expand_log`` only
    does this for arguments it can prove positive)."""
    if not e.has(sp.log):
        return e
    return e.replace(sp.log, lambda a: _log_of(a) if is_nonneg_real(a) else sp.log(a))


def strip_monotone(e: sp.Expr) -> tuple[int, sp.Expr]:
    """Strip strictly monotone maps at the root: ``(sign, core)`` with ``e`` order-equivalent to sign·core."""
    sign = 1
    while True:
        if is_scalar(e):
            return 1, sp.S.Zero  # a constant score: every element ties
        if e.is_Add:
            rest = [t for t in e.args if not is_scalar(t)]
            if len(rest) < len(e.args):
                e = sp.Add(*rest)
                continue
            content, prim = e.as_content_primitive()
            if content != 1 and content.is_positive:
                e = prim
                continue
            if e.could_extract_minus_sign():
                sign, e = -sign, -e
                continue
            return sign, e
        if e.is_Mul:
            scalars = [f for f in e.args if is_scalar(f)]
            if not scalars:
                if all(is_nonneg_real(f) for f in e.args):
                    # A product of nonnegative factors orders like the sum of their logs. This one normal form
                    # absorbs powers (X**2*G**2 ~ X*G), reciprocals (1/(X*G) ~ -(X*G)) and exponentials.
                    e = sp.Add(*(_log_of(f) for f in e.args))
                    continue
                inner = _common_power(e)
                if inner is None:
                    return sign, e
                e = inner
                continue
            factor = sp.Mul(*scalars)
            if not (factor.is_positive or factor.is_negative):
                return sign, e
            sign = -sign if factor.is_negative else sign
            e = sp.Mul(*[f for f in e.args if not is_scalar(f)])
            continue
        if e.is_Pow:
            base, ex = e.as_base_exp()
            if ex.is_Number and ex.is_positive and (is_nonneg_real(base) or (ex.is_Integer and ex % 2 == 1)):
                e = base
                continue
            if ex.is_Integer and ex % 2 == 0:
                # x**(2k) = |x|**(2k): increasing in |x| for k > 0, decreasing for k < 0
                sign, e = (sign if ex > 0 else -sign), abs_real(base)
                continue
            if ex.is_Number and ex.is_negative and is_nonneg_real(base):
                sign, e = -sign, base
                continue
            if base.is_Number and base.is_positive and base != 1 and not is_scalar(ex):
                sign, e = (sign if base > 1 else -sign), ex
                continue
            return sign, e
        if isinstance(e, sp.Function) and len(e.args) == 1:
            kind = _monotone(e)
            if kind == "inc" or (kind == "inc_nonneg" and is_nonneg_real(e.args[0])):
                e = e.args[0]
                continue
            if kind == "dec":
                sign, e = -sign, e.args[0]
                continue
        return sign, e


def _factor(e: sp.Expr) -> sp.Expr:
    """Factor a small root sum (``X**2 + 2*G*X + G**2`` → ``(G + X)**2``); larger sums are left alone."""
    if not e.is_Add or len(e.args) > MAX_FACTOR_TERMS or sp.count_ops(e) > 4 * MAX_FACTOR_TERMS:
        return e
    # Large numbers (exp(1e30*x), x**64) make SymPy's factorisation run for minutes: skip those.
    if any(abs(n) > 64 or (n.is_Rational and n.q > 64) for n in e.atoms(sp.Number)):
        return e
    return sp.factor(e)


def _strip_rewriting(e: sp.Expr) -> tuple[int, sp.Expr]:
    """:func:`strip_monotone`, retried after rewriting the root whenever that lets it strip more: pulling
    out common factors (``factor_terms``: a whole-matrix scalar hidden in a denominator) or factoring a
    small sum (``X**2 + 2*G*X + G**2`` → ``(G + X)**2``)."""
    sign, e = strip_monotone(e)
    seen = {e}
    progress = True
    while progress:
        progress = False
        for transform in (sp.factor_terms, _factor):
            t = transform(e)
            if t == e:
                continue
            s2, core = strip_monotone(t)
            if core == t or core in seen:
                continue  # nothing stripped (keep the original form), or a cycle
            seen.add(core)
            sign, e, progress = sign * s2, core, True
            break
    return sign, e


def rank_core(e: sp.Expr) -> tuple[int, sp.Expr]:
    """``(sign, core)`` with ``e`` order-equivalent to ``sign * core``; ``core`` is in canonical (expanded)
    form. Stripping starts on the unexpanded twin, where the tree's monotone maps are still visible, and is
    repeated on the expanded core until nothing changes."""
    sign, seen = 1, set()
    while e not in seen:
        seen.add(e)
        s, e = _strip_rewriting(e)
        sign *= s
        e = _split_logs(_clean_abs(_expand(e)))
    return sign, e


def _as_product(core: sp.Expr) -> sp.Expr:
    """A pure log-sum ``Σ c_i·log f_i`` shown as the product ``Π f_i**c_i`` (its exp: same order, more
    readable, and still one string per normal form): ``log(X) + log(Abs(W))`` → ``X*Abs(W)``."""
    terms = core.args if core.is_Add else (core,)
    factors = []
    for term in terms:
        coeff, rest = term.as_coeff_Mul()
        if not isinstance(rest, sp.log):
            return core
        factors.append(rest.args[0] ** coeff)
    return sp.Mul(*factors)


@functools.lru_cache(maxsize=65536)
def _rank(node: Node, version: int) -> str:
    simplified = simplify_node(node)
    twin = node_to_sympy(simplified)
    if _degenerate(twin):
        return "tree:" + node_string(simplified)
    sign, core = rank_core(_split_logs(_clean_abs(twin)))
    text = sp.sstr(_as_product(core), order=None)
    return text if sign > 0 or text == "0" else f"-({text})"


def rank_key(tree: TreeLike) -> str:
    """A stable string, equal for trees whose scores induce the same per-row (and N:M) ordering.

    It is the canonical expression with strictly monotone maps stripped at the root (see the module
    docstring); a leading ``-(...)`` records an order reversal. ``"0"`` means a constant score.
    """
    return _rank(to_node(as_tree(tree)), registry.registry_version())
