"""Opposing-operation simplification (OOS), as in Pruner-Zero, driven by the operators' properties.

Rules, applied bottom-up until nothing changes (each one shrinks the tree, so this terminates). "Exact"
means the simplified tree computes bit-for-bit the same scores in torch for every finite input (up to the
sign of zero); the other rules hold in real arithmetic and differ in torch only by rounding and where a
guard acts:

==============================  ==========================================  ==================================
rule                            example                                     exact in torch?
==============================  ==========================================  ==================================
inverse pair, ``x``             ``neg(neg(x)) → x``                         yes
inverse pair, ``x``             ``log(exp(x)) → x``                         no: rounding; differs for x > 88
                                                                            (clamp) and x < −69 (EPS floor)
inverse pair, ``|x|``           ``exp(log(x)) → abs(x)``                    no: rounding; |x| < 1e-30 → 1e-30
inverse pair, ``|x|``           ``sqrt(sqr(x)) → abs(x)``                   no: exact for 1e-19 < |x| < 1.8e19
                                                                            only (sqr under/overflow)
inverse pair, ``|x|``           ``sqr(sqrt(x)) → abs(x)``                   no: rounding (1 ulp)
even op of ``neg``/``abs``      ``sqr(neg(x))``, ``log(abs(x)) → log(x)``   yes (sqr, abs, sqrt, log)
idempotent op                   ``abs(abs(x)) → abs(x)``                    yes
idempotent op                   ``mms(mms(x)) → mms(x)`` (zsn, normalize,   no: rounding
                                rowrel, colrel)
``abs`` of a nonneg subtree     ``abs(mul(X, G)) → mul(X, G)``              yes
same operands                   ``sub(x, x) → 0``                           yes
same operands                   ``div(x, x) → 1``                           no: 0 where x = 0, x/1e-30 where
                                                                            |x| < 1e-30
==============================  ==========================================  ==================================

A subtree is nonnegative if it is a nonnegative leaf (``X``, ``G``) or constant, an operator with the
``nonnegative`` property (``sqr abs exp sqrt sigmoid mms``), or a ``preserves_nonneg`` operator (``add mul
div divnorm tanh normalize rowrel colrel``) of nonnegative subtrees.
"""
from __future__ import annotations

import functools

from deap import gp

from .registry import LEAVES, OPERATORS
from .nodes import Node, default_pset, from_node, to_node
from .trees import TreeLike, as_tree


@functools.lru_cache(maxsize=65536)
def is_nonneg(node: Node) -> bool:
    """Whether a subtree is provably ``>= 0`` for every input (see the module docstring)."""
    if node.kind == "leaf":
        return LEAVES[node.name].nonnegative
    if node.kind == "const":
        return node.value >= 0
    op = OPERATORS[node.name]
    return op.nonnegative or (op.preserves_nonneg and all(is_nonneg(a) for a in node.args))


def _rewrite(node: Node, exact_only: bool) -> Node | None:
    """One rule at the root of ``node`` (whose children are already simplified), or ``None``."""
    op = OPERATORS[node.name]
    if op.arity == 2:
        a, b = node.args
        if op.self_value is not None and a == b and (op.exact_self or not exact_only):
            value = op.self_value
            return Node.const(int(value) if float(value).is_integer() else value)
        return None
    (a,) = node.args
    if a.kind != "op":
        if node.name == "abs" and is_nonneg(a):
            return a
        return None
    inner = OPERATORS[a.name]
    if a.name == node.name and op.idempotent and (node.name == "abs" or not exact_only):
        return a
    if op.even and inner.name in ("neg", "abs"):
        return Node.op(node.name, a.args[0])
    if op.inverse_of == a.name and (op.exact_inverse or not exact_only):
        x = a.args[0]
        return x if op.inverse_gives == "x" else Node.op("abs", x)
    if node.name == "abs" and is_nonneg(a):
        return a
    return None


@functools.lru_cache(maxsize=65536)
def simplify_node(node: Node, exact_only: bool = False) -> Node:
    """OOS of a :class:`Node` (cached)."""
    if node.kind != "op":
        return node
    node = Node.op(node.name, *(simplify_node(a, exact_only) for a in node.args))
    while node.kind == "op":
        new = _rewrite(node, exact_only)
        if new is None:
            break
        node = new  # children are simplified already; only the new root can match again
    return node


def simplify_tree(tree: TreeLike, pset: gp.PrimitiveSet | None = None, exact_only: bool = False
                  ) -> gp.PrimitiveTree:
    """Remove opposing and redundant operations (Pruner-Zero's OOS); see the module docstring for the rules.

    Args:
        tree: A tree or expression string.
        pset: Primitive set for the result's nodes (default: every registered operator; the result may
            contain ``abs`` and constants even if the input did not).
        exact_only: Apply only the rules that are bit-exact in torch (then the simplified tree gives the
            same scores, hence the same masks, for every finite input).

    Returns:
        A new ``gp.PrimitiveTree``; the input is not modified.
    """
    return from_node(simplify_node(to_node(as_tree(tree, pset)), bool(exact_only)), pset or default_pset())
