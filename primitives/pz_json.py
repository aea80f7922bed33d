"""Pruner-Zero's JSON tree format (``data/best_tree.json`` in github.com/pprp/Pruner-Zero).

A node is ``{"data": label, "left": node, "right": node}``: binary operators have both children, unary
operators only ``"left"``, leaves (``"W"``, ``"X"``, ``"G"``) and constants neither. Their published metric::

    {"data": "mul",
     "left": {"data": "abs", "left": {"data": "mul", "left": {"data": "W"}, "right": {"data": "W"}}},
     "right": {"data": "mms", "left": {"data": "G"}}}

Names differ in three places (``dialect="pruner-zero"``, the default): Pruner-Zero's ``div`` is
``x / ‖y‖_F`` (our ``divnorm``), ``pow`` is our ``sqr`` and ``skp`` is the identity (dropped on import). Our
element-wise ``div`` has no Pruner-Zero name, so exporting it in that dialect raises; ``dialect="native"``
uses our operator names unchanged (lossless for every tree). Constants are written as JSON numbers; numbers
and numeric strings are read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deap import gp

from .errors import ExpressionError
from .registry import LEAVES, OPERATORS
from .nodes import Node, default_pset, from_node, to_node
from .trees import TreeLike, as_tree

_FROM_PZ = {"div": "divnorm", "pow": "sqr"}
_TO_PZ = {"divnorm": "div"}
_DIALECTS = ("pruner-zero", "native")


def _check_dialect(dialect: str) -> None:
    if dialect not in _DIALECTS:
        raise ValueError(f"dialect must be one of {_DIALECTS}, got {dialect!r}")


def _const(label: Any, path: str) -> Node | None:
    if isinstance(label, bool):
        return None
    if isinstance(label, (int, float)):
        return Node.const(label)
    try:
        value = int(label) if label.lstrip("+-").isdigit() else float(label)
    except (ValueError, AttributeError):
        return None
    try:
        return Node.const(value)
    except ExpressionError as err:
        raise ExpressionError(f"{err} at {path}", path) from None


def _read(d: Any, path: str, dialect: str) -> Node:
    if not isinstance(d, dict) or "data" not in d:
        raise ExpressionError(f"expected an object with a 'data' field at {path}", path)
    extra = set(d) - {"data", "left", "right"}
    if extra:
        raise ExpressionError(f"unexpected field(s) {sorted(extra)} at {path}", path)
    label = d["data"]
    kids = [(k, d[k]) for k in ("left", "right") if d.get(k) is not None]
    if dialect == "pruner-zero" and label == "skp":
        if [k for k, _ in kids] != ["left"]:
            raise ExpressionError(f"operator 'skp' needs exactly a 'left' child at {path}", path)
        return _read(d["left"], path + ".left", dialect)
    name = _FROM_PZ.get(label, label) if dialect == "pruner-zero" else label
    if isinstance(name, str) and name in OPERATORS:
        want = ["left", "right"][:OPERATORS[name].arity]
        if [k for k, _ in kids] != want:
            raise ExpressionError(f"operator {label!r} takes {len(want)} child(ren) ({' and '.join(want)}), "
                                  f"got {[k for k, _ in kids] or 'none'} at {path}", path)
        return Node.op(name, *(_read(v, f"{path}.{k}", dialect) for k, v in kids))
    if isinstance(name, str) and name in LEAVES:
        node = Node.leaf(name)
    else:
        node = _const(label, path)
        if node is None:
            raise ExpressionError(f"unknown name {label!r} at {path}", path)
    if kids:
        raise ExpressionError(f"leaf {label!r} must not have children at {path}", path)
    return node


def from_pz_json(data: dict | str | os.PathLike, pset: gp.PrimitiveSet | None = None,
                 dialect: str = "pruner-zero") -> gp.PrimitiveTree:
    """Load a Pruner-Zero JSON tree.

    Args:
        data: The parsed JSON (a dict), JSON text, or a path to a JSON file.
        pset: Primitive set of the result (default: every registered operator).
        dialect: ``"pruner-zero"`` (their ``div``/``pow``/``skp``) or ``"native"`` (our names).

    Returns:
        A ``gp.PrimitiveTree``.

    Raises:
        ExpressionError: Malformed JSON or tree; the message gives the JSON path (``$.left.right``).
    """
    _check_dialect(dialect)
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        data = Path(data).read_text()
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ExpressionError(f"invalid JSON: {err.msg} at position {err.pos}", err.pos) from None
    try:
        node = _read(data, "$", dialect)
    except RecursionError:
        raise ExpressionError("JSON tree is nested too deeply", "$") from None
    return from_node(node, pset or default_pset())


def _write(node: Node, dialect: str) -> dict:
    if node.kind == "const":
        return {"data": node.value}
    if node.kind == "leaf":
        return {"data": node.name}
    name = node.name
    if dialect == "pruner-zero":
        if name == "div":
            raise ExpressionError("element-wise 'div' has no Pruner-Zero name (their 'div' is x/‖y‖, our "
                                  "'divnorm'); use dialect='native'")
        name = _TO_PZ.get(name, name)
    out = {"data": name, "left": _write(node.args[0], dialect)}
    if len(node.args) == 2:
        out["right"] = _write(node.args[1], dialect)
    return out


def to_pz_json(tree: TreeLike, dialect: str = "pruner-zero") -> dict:
    """The tree as a Pruner-Zero JSON object (``json.dumps`` it to write a file).

    Raises:
        ExpressionError: In the ``"pruner-zero"`` dialect, for an element-wise ``div``.
    """
    _check_dialect(dialect)
    return _write(to_node(as_tree(tree)), dialect)
