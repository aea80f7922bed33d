"""Human-readable views for the CLI: the operator table and the four-line simplification report."""
from __future__ import annotations

import sympy as sp

from .keys import canonical_key, rank_key
from .sympy_form import read_expression
from .registry import LEAVES, OPERATORS
from .simplify import simplify_tree
from .trees import to_string


def _cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def _twin(op) -> str:
    args = (sp.Symbol("x", real=True), sp.Symbol("y", real=True))[:op.arity]
    try:
        return sp.sstr(op.sympy_fn(*args))
    except Exception as err:  # a twin that cannot take plain symbols is still listed
        return f"(twin raised {type(err).__name__})"


def leaf_table() -> str:
    """Markdown table of the registered leaves."""
    rows = ["| leaf | shape | nonnegative | meaning |", "| --- | --- | --- | --- |"]
    for leaf in LEAVES.values():
        rows.append(f"| `{leaf.name}` | {leaf.shape} | {'yes' if leaf.nonnegative else 'no'} | "
                    f"{_cell(leaf.description)} |")
    return "\n".join(rows)


def operator_table() -> str:
    """Markdown table of every registered operator: name, arity, exact torch definition (guards included),
    SymPy twin, LaTeX template and the properties the simplifier uses."""
    rows = ["| name | arity | torch (exact, with guards) | SymPy twin | LaTeX | properties |",
            "| --- | --- | --- | --- | --- | --- |"]
    for op in OPERATORS.values():
        latex = op.latex.format(*"xy"[:op.arity])
        rows.append(f"| `{op.name}` | {op.arity} | `{_cell(op.torch_doc)}` | `{_cell(_twin(op))}` | "
                    f"`{_cell(latex)}` | {_cell(', '.join(op.properties)) or '–'} |")
    return "\n".join(rows)


def simplify_report(expr: str) -> str:
    """Four lines for ``metric-search simplify``: the parsed tree, its OOS simplification, its canonical key
    and its rank key.

    Raises:
        ExpressionError: If ``expr`` does not parse.
    """
    tree = read_expression(expr)
    return "\n".join([f"tree: {to_string(tree)}", f"simplified: {to_string(simplify_tree(tree))}",
                      f"canonical: {canonical_key(tree)}", f"rank: {rank_key(tree)}"])
