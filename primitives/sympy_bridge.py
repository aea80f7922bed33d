"""Trees ⇄ SymPy expressions through the operators' SymPy twins.

Leaves become symbols: ``W`` is real, every leaf registered with ``nonnegative=True`` (``X``, ``G``) is a
nonnegative real. Constants become exact rationals (``0.1`` → ``1/10``) so that ``mul(0.5, W)`` and
``div(W, 2)`` meet. The twins ignore the torch guards (see :mod:`primitives.registry`).
"""
from __future__ import annotations

import functools
import math

import sympy as sp
from deap import gp

from . import registry
from .errors import ExpressionError
from .ops_sympy import fro
from .registry import LEAVES, OPERATORS
from .nodes import Node, default_pset, from_node, to_node
from .trees import TreeLike, as_tree


def leaf_symbol(name: str) -> sp.Symbol:
    """The SymPy symbol of a registered leaf."""
    # Guards are ignored on the SymPy side, so leaves are taken to be nonzero: X, G > 0 and W real ≠ 0.
    # This lets SymPy see that log|W| is real and that |1/W| = 1/|W|.
    leaf = LEAVES[name]
    return sp.Symbol(name, positive=True) if leaf.nonnegative else sp.Symbol(name, real=True, nonzero=True)


def const_to_sympy(value) -> sp.Expr:
    """Exact SymPy number of a tree constant: ints stay integers, floats become their decimal rational."""
    return sp.Integer(value) if isinstance(value, int) else sp.Rational(repr(float(value)))


@functools.lru_cache(maxsize=65536)
def _node_sympy(node: Node, version: int) -> sp.Expr:
    if node.kind == "leaf":
        return leaf_symbol(node.name)
    if node.kind == "const":
        return const_to_sympy(node.value)
    return OPERATORS[node.name].sympy_fn(*(_node_sympy(a, version) for a in node.args))


def node_to_sympy(node: Node) -> sp.Expr:
    """SymPy twin of a :class:`Node` (cached)."""
    return _node_sympy(node, registry.registry_version())


def to_sympy(tree: TreeLike) -> sp.Expr:
    """The SymPy expression of a tree (or expression string), built from the operators' twins.

    SymPy's automatic evaluation already merges ``mul(W, X)`` with ``mul(X, W)`` and ``add(W, W)`` with
    ``mul(2, W)``; :func:`primitives.canonical_key` expands further.
    """
    return node_to_sympy(to_node(as_tree(tree)))


@functools.lru_cache(maxsize=8)
def _function_map(version: int) -> dict:
    """SymPy function class → operator name, for operators whose twin is ``F(x[, y])`` for a class ``F``."""
    x, y = sp.Symbol("x_", real=True), sp.Symbol("y_", real=True)
    out = {}
    for op in OPERATORS.values():
        args = (x, y)[:op.arity]
        try:
            probe = op.sympy_fn(*args)
        except Exception:  # a twin that rejects symbols is simply not invertible
            continue
        if isinstance(probe, sp.Function) and probe.args == args:
            out.setdefault(probe.func, op.name)
    out.setdefault(sp.log, "log")
    out.setdefault(sp.Abs, "abs")  # log's twin is log(|x|); log(x) of a nonnegative x converts back to log
    return out


def function_map() -> dict:
    """SymPy function class → operator name (see :func:`from_sympy`)."""
    return _function_map(registry.registry_version())


def _number(e: sp.Expr) -> Node:
    if e.is_Integer:
        return Node.const(int(e))
    if e.is_Rational:
        as_float = float(e)
        if sp.Rational(repr(as_float)) == e:
            return Node.const(as_float)
        return Node.op("div", Node.const(int(e.p)), Node.const(int(e.q)))
    value = float(e)
    if not math.isfinite(value):
        raise ExpressionError(f"cannot convert the non-finite SymPy number {e} to a tree")
    return Node.const(value)


def _power(base: Node, n: int) -> Node:
    """base**n for an integer n >= 1 by repeated squaring."""
    if n == 1:
        return base
    if n % 2 == 0:
        return Node.op("sqr", _power(base, n // 2))
    return Node.op("mul", _power(base, n - 1), base)


def _fold(name: str, nodes: list[Node]) -> Node:
    out = nodes[0]
    for n in nodes[1:]:
        out = Node.op(name, out, n)
    return out


def _fold_norms(node: Node, norms: list[sp.Expr]) -> Node:
    for y in norms:
        node = Node.op("divnorm", node, _convert(y))
    return node


def _convert(e: sp.Expr) -> Node:
    if e is sp.E:
        return Node.op("exp", Node.const(1))
    if e.is_Number or isinstance(e, sp.NumberSymbol):
        return _number(e)
    if isinstance(e, sp.Symbol):
        if e.name not in LEAVES:
            raise ExpressionError(f"unknown symbol {e.name!r} (registered leaves: {', '.join(LEAVES)})")
        return Node.leaf(e.name)
    if e.is_Add:
        terms = list(e.as_ordered_terms())
        pos = [t for t in terms if not t.could_extract_minus_sign()]
        neg = [-t for t in terms if t.could_extract_minus_sign()]
        if not pos:
            return Node.op("neg", _convert(sp.Add(*neg)))
        out = _fold("add", [_convert(t) for t in pos])
        for t in neg:
            out = Node.op("sub", out, _convert(t))
        return out
    if e.is_Mul:
        coeff, factors = e.as_coeff_mul()
        if coeff.is_negative:
            return Node.op("neg", _convert(-e))
        num, den, norms = [], [], []
        if coeff != 1:
            num.append(_number(coeff))
        for f in factors:
            base, ex = f.as_base_exp()
            if isinstance(base, fro) and ex.is_Integer and ex < 0:
                norms.extend([base.args[0]] * int(-ex))
            elif f.is_Pow and ex.is_Number and ex.is_negative:
                den.append(base ** -ex)
            else:
                num.append(_convert(f))
        out = _fold("mul", num) if num else Node.const(1)
        if den:
            out = Node.op("div", out, _fold("mul", [_convert(d) for d in den]))
        return _fold_norms(out, norms)
    if e.is_Pow:
        base, ex = e.as_base_exp()
        if isinstance(base, fro) and ex.is_Integer and ex < 0:
            return _fold_norms(Node.const(1), [base.args[0]] * int(-ex))
        if not ex.is_Rational:
            raise ExpressionError(f"cannot convert the power {e} (exponent must be a rational number)")
        p, q = int(ex.p), int(ex.q)
        if q & (q - 1):
            raise ExpressionError(f"cannot convert the power {e} (root order must be a power of 2)")
        node = _power(_convert(base), abs(p))
        while q > 1:
            node, q = Node.op("sqrt", node), q // 2
        return Node.op("div", Node.const(1), node) if p < 0 else node
    if isinstance(e, fro):
        return Node.op("div", Node.const(1), Node.op("divnorm", Node.const(1), _convert(e.args[0])))
    name = function_map().get(e.func)
    if name is not None:
        return Node.op(name, *(_convert(a) for a in e.args))
    raise ExpressionError(f"cannot convert SymPy expression {e} ({type(e).__name__}) to a tree")


def _fit(node: Node, ops: set[str]) -> Node:
    """Rewrite sub, sqr and neg through add and mul when the primitive set lacks them."""
    if node.kind != "op":
        return node
    args = tuple(_fit(a, ops) for a in node.args)
    if node.name not in ops:
        if node.name == "sub" and "add" in ops:
            return _fit(Node.op("add", node.args[0], Node.op("neg", node.args[1])), ops)
        if node.name == "sqr" and "mul" in ops:
            return Node.op("mul", args[0], args[0])
        if node.name == "neg" and "mul" in ops:
            return Node.op("mul", Node.const(-1), args[0])
    return Node.op(node.name, *args)


def from_sympy(expr: sp.Expr, pset: gp.PrimitiveSet | None = None) -> gp.PrimitiveTree:
    """Build a tree from a SymPy expression (e.g. one returned by :func:`to_sympy`).

    The tree's twin equals ``expr`` up to SymPy's automatic evaluation, so it has the same canonical and
    rank key as the tree ``expr`` came from. Sums become ``add``/``sub``, products ``mul``/``div``,
    integer powers ``sqr``/``mul``, powers ``p/2^k`` nested ``sqrt``, ``x/fro(y)`` becomes ``divnorm``.

    Args:
        expr: A SymPy expression over leaf symbols (strings are refused: ``sympify`` would ``eval`` them).
        pset: Primitive set that must contain the operators used; default: every registered operator.

    Raises:
        ExpressionError: On symbols that are not leaves or constructs without an operator.
    """
    if not isinstance(expr, sp.Basic):
        if isinstance(expr, (int, float)) and not isinstance(expr, bool):
            expr = sp.Float(expr) if isinstance(expr, float) else sp.Integer(expr)
        else:
            raise TypeError(f"expected a SymPy expression, got {type(expr).__name__}")
    pset = pset or default_pset()
    node = _convert(expr)
    ops = set(getattr(pset, "op_names", None) or
              [n for n, p in pset.mapping.items() if isinstance(p, gp.Primitive)])
    return from_node(_fit(node, ops), pset)
