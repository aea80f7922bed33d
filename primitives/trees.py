"""DEAP primitive sets built from the registry, and the tree ⇄ nested-node ⇄ string conversions.

A tree is a DEAP ``gp.PrimitiveTree`` (a prefix-ordered list of nodes). Leaves are the primitive set's
arguments (``W``, ``X``, ``G``; DEAP terminals whose value is the leaf name); numeric constants are
``gp.Terminal(value, False, object)`` nodes (ephemeral constants are Terminal subclasses with a numeric
value and are treated the same way). Internally the simplifier and the SymPy bridge work on
:class:`Node`, a hashable nested form in which equal subtrees compare equal.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from deap import gp

from . import registry
from .errors import ExpressionError
from .registry import LEAVES, OPERATORS

TreeLike = Union[gp.PrimitiveTree, str]


def make_primitive_set(leaves: Sequence[str] = ("W", "X", "G"), operators: Iterable[str] | None = None,
                       constants: Iterable[float] = (), ephemeral: tuple | None = None) -> gp.PrimitiveSet:
    """Build a DEAP primitive set from the registry.

    Args:
        leaves: Leaf names; they become the arguments of the set (and the positional order of compiled trees).
        operators: Operator names, or ``None`` for every registered operator.
        constants: Numeric constants to add as terminals (the search generates none by default).
        ephemeral: Optional ``(name, fn)`` for a DEAP ephemeral constant (``fn()`` returns a number). DEAP
            requires the name to be globally unique per function.

    Returns:
        A ``gp.PrimitiveSet`` named ``"MAIN"`` with extra attributes ``leaves`` and ``op_names``.

    Raises:
        ValueError: On an unknown leaf or operator name.
    """
    leaves = tuple(leaves)
    ops = tuple(OPERATORS) if operators is None else tuple(operators)
    for name in leaves:
        if name not in LEAVES:
            raise ValueError(f"unknown leaf {name!r}; registered: {', '.join(LEAVES)}")
    for name in ops:
        if name not in OPERATORS:
            raise ValueError(f"unknown operator {name!r}; registered: {', '.join(OPERATORS)}")
    if len(set(leaves)) != len(leaves) or len(set(ops)) != len(ops):
        raise ValueError("leaf and operator names must be unique")
    pset = gp.PrimitiveSet("MAIN", len(leaves))
    pset.renameArguments(**{f"ARG{i}": name for i, name in enumerate(leaves)})
    for name in ops:
        op = OPERATORS[name]
        pset.addPrimitive(op.torch_fn, op.arity, name=name)
    for value in constants:
        pset.addTerminal(_number(value))
    if ephemeral is not None:
        pset.addEphemeralConstant(*ephemeral)
    pset.leaves = leaves
    pset.op_names = ops
    return pset


_DEFAULT: dict[int, gp.PrimitiveSet] = {}


def default_pset() -> gp.PrimitiveSet:
    """A primitive set with every registered leaf and operator (rebuilt after each registration)."""
    version = registry.registry_version()
    if version not in _DEFAULT:
        _DEFAULT.clear()
        _DEFAULT[version] = make_primitive_set(tuple(LEAVES), None)
    return _DEFAULT[version]


def _number(value) -> int | float:
    """A plain finite Python number (DEAP prints constants with ``repr``; numpy scalars would print oddly)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if abs(int(value)) > 1e308:  # would become inf as a float
            raise ExpressionError(f"integer constant with {len(str(abs(int(value))))} digits is not finite as a float")
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ExpressionError(f"constant {float(value)!r} is not finite")
        return float(value)
    raise ExpressionError(f"constant {value!r} is not a number")


@dataclass(frozen=True)
class Node:
    """A hashable tree node: ``kind`` is ``"op"``, ``"leaf"`` or ``"const"``."""

    kind: str
    name: str
    args: tuple["Node", ...] = ()
    value: float | int | None = None

    @staticmethod
    def op(name: str, *args: "Node") -> "Node":
        return Node("op", name, tuple(args))

    @staticmethod
    def leaf(name: str) -> "Node":
        return Node("leaf", name)

    @staticmethod
    def const(value) -> "Node":
        value = _number(value)
        return Node("const", repr(value), (), value)


def node_kind(node, leaf_names: Iterable[str] | None = None) -> str:
    """``"op"``, ``"leaf"`` or ``"const"`` for a DEAP node."""
    if isinstance(node, gp.Primitive):
        return "op"
    value = node.value
    if isinstance(value, str):
        if value in (leaf_names if leaf_names is not None else LEAVES):
            return "leaf"
        raise ExpressionError(f"terminal {value!r} is neither a registered leaf nor a number")
    return "const"


def to_node(tree: gp.PrimitiveTree) -> Node:
    """Convert a DEAP tree to nested :class:`Node` form."""
    stack: list[tuple[object, list[Node]]] = []
    result = None
    for item in tree:
        stack.append((item, []))
        while len(stack[-1][1]) == stack[-1][0].arity:
            item_, args = stack.pop()
            kind = node_kind(item_)
            if kind == "op":
                if item_.name not in OPERATORS:
                    raise ExpressionError(f"operator {item_.name!r} is not registered")
                node = Node.op(item_.name, *args)
            elif kind == "leaf":
                node = Node.leaf(item_.value)
            else:
                node = Node.const(item_.value)
            if not stack:
                result = node
                break
            stack[-1][1].append(node)
    if result is None or stack:
        raise ExpressionError("incomplete tree")
    return result


def from_node(node: Node, pset: gp.PrimitiveSet | None = None) -> gp.PrimitiveTree:
    """Convert a :class:`Node` to a DEAP tree whose primitives and leaves come from ``pset``.

    Raises:
        ExpressionError: If ``pset`` lacks an operator or leaf the node uses.
    """
    pset = pset or default_pset()
    out: list = []
    todo = [node]
    while todo:
        n = todo.pop()
        if n.kind == "const":
            out.append(gp.Terminal(n.value, False, object))
            continue
        item = pset.mapping.get(n.name)
        if item is None:
            what = "operator" if n.kind == "op" else "leaf"
            raise ExpressionError(f"{what} {n.name!r} is not in the primitive set")
        out.append(item)
        todo.extend(reversed(n.args))
    return gp.PrimitiveTree(out)


def as_tree(tree: TreeLike, pset: gp.PrimitiveSet | None = None) -> gp.PrimitiveTree:
    """Accept a tree or an expression string (parsed with :func:`primitives.parse`)."""
    if isinstance(tree, str):
        from .parse import parse
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
