"""Trees as strings, infix, LaTeX and sizes; any of them accepts a tree or an expression string.

The primitive sets and the tree ⇄ :class:`Node` conversions live in ``nodes.py``, parsing in ``parse.py``.
"""
from __future__ import annotations

from typing import Union

from deap import gp

from .nodes import Node, to_node
from .parse import parse
from .registry import LEAVES, OPERATORS

TreeLike = Union[gp.PrimitiveTree, str]


def as_tree(tree: TreeLike, pset: gp.PrimitiveSet | None = None) -> gp.PrimitiveTree:
    """Accept a tree or an expression string (parsed with :func:`primitives.parse`)."""
    if isinstance(tree, str):
        return parse(tree, pset)
    if isinstance(tree, gp.PrimitiveTree):
        return tree
    if isinstance(tree, (list, tuple)):
        return gp.PrimitiveTree(tree)
    raise TypeError(f"expected a gp.PrimitiveTree or an expression string, got {type(tree).__name__}")


def _fmt_const(value) -> str:
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


def node_string(node: Node) -> str:
    """Functional string of a node, e.g. ``mul(abs(W), X)``."""
    if node.kind == "leaf":
        return node.name
    if node.kind == "const":
        return _fmt_const(node.value)
    return f"{node.name}({', '.join(node_string(a) for a in node.args)})"


def to_string(tree: TreeLike) -> str:
    """The primary string form, as DEAP prints it: ``mul(abs(W), X)``; constants use ``repr``."""
    return node_string(to_node(as_tree(tree)))


def _infix(node: Node) -> tuple[str, int]:
    """(text, precedence) where precedence 9 means atomic."""
    if node.kind == "leaf":
        return node.name, 9
    if node.kind == "const":
        text = _fmt_const(node.value)
        return (text, 9) if not text.startswith("-") else (text, 3)
    op = OPERATORS[node.name]
    parts = [_infix(a) for a in node.args]
    if op.infix and op.arity == 2:
        (lt, lp), (rt, rp) = parts
        lt = lt if lp >= op.precedence else f"({lt})"
        rt = rt if rp > op.precedence else f"({rt})"  # keeps the tree's shape: a - (b - c), a + (b + c)
        return f"{lt} {op.infix} {rt}", op.precedence
    if node.name == "neg":
        (t, p), = parts
        atomic = p == 9 and node.args[0].kind != "const"  # "-2" would read back as a constant
        return "-" + (t if atomic else f"({t})"), 3
    return f"{node.name}({', '.join(t for t, _ in parts)})", 9


def to_infix(tree: TreeLike) -> str:
    """Infix string that :func:`primitives.parse` reads back to the same tree: ``abs(W) * X + G``."""
    return _infix(to_node(as_tree(tree)))[0]


def _latex(node: Node) -> tuple[str, int]:
    if node.kind == "leaf":
        return node.name, 9
    if node.kind == "const":
        text = _fmt_const(node.value)
        return text, 9 if not text.startswith("-") else 3
    op = OPERATORS[node.name]
    parts = [_latex(a) for a in node.args]
    bare = not op.latex.startswith("\\")  # templates such as "{0} + {1}" need parenthesised operands
    prec = op.precedence or 9
    out = []
    for i, (text, p) in enumerate(parts):
        wrap = bare and (p < prec or (p == prec and (i == 1 or prec >= 3)) or (p == 3 and prec < 9))
        out.append(rf"\left({text}\right)" if wrap else text)
    return op.latex.format(*out), prec if bare else 9


def to_latex(tree: TreeLike) -> str:
    """LaTeX rendering from the operators' ``latex`` templates, e.g. ``\\left|W\\right| \\cdot X``."""
    return _latex(to_node(as_tree(tree)))[0]


def tree_size(tree: TreeLike) -> int:
    """Number of nodes."""
    return len(as_tree(tree))


def tree_height(tree: TreeLike) -> int:
    """Depth of the deepest node (a single leaf has height 0), as DEAP defines it."""
    return as_tree(tree).height


def leaves_used(tree: TreeLike) -> tuple[str, ...]:
    """Leaf names the tree reads, in registry order (``W``, ``X``, ``G``, then later registrations)."""
    names = {n.value for n in as_tree(tree) if not isinstance(n, gp.Primitive) and isinstance(n.value, str)}
    return tuple(name for name in LEAVES if name in names)
