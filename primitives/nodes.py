"""DEAP primitive sets built from the registry, and the tree ⇄ nested-node conversions.

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
from typing import Iterable, Sequence

from deap import gp

from . import registry
from .errors import ExpressionError
from .registry import LEAVES, OPERATORS


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
