"""The search space of pruning metrics: leaves, operators, trees and their canonical forms.

Depends only on torch, sympy, deap and numpy. Quick tour::

    from primitives import parse, compile_tree, canonical_key, rank_key
    tree = parse("mul(abs(mul(W, W)), mms(G))")        # Pruner-Zero's published metric
    scores = compile_tree(tree)(W=weight, G=grad_norm)  # (out, in), finite
    canonical_key(tree), rank_key(tree)                 # 'W**2*mms(G)', 'W**2*mms(G)'
"""
from __future__ import annotations

from . import builtin_ops as _builtin_ops  # noqa: F401  (registers W, X, G and the built-in operators)
from .compiler import CompiledTree, compile_tree
from .errors import ExpressionError
from .keys import canonical_key, canonical_sympy, rank_key, strip_monotone
from .parse import parse
from .pz_json import from_pz_json, to_pz_json
from .registry import EPS, EXP_MAX, LEAVES, OPERATORS, Leaf, Operator, register_leaf, register_operator
from .report import leaf_table, operator_table, simplify_report
from .simplify import is_nonneg, simplify_tree
from .sympy_bridge import from_sympy, leaf_symbol, to_sympy
from .sympy_form import read_expression, read_sympy_form
from .nodes import Node, default_pset, make_primitive_set, to_node
from .trees import leaves_used, to_infix, to_latex, to_string, tree_height, tree_size

__all__ = [
    "LEAVES", "register_leaf", "OPERATORS", "register_operator", "ExpressionError", "make_primitive_set",
    "parse", "read_expression", "to_string", "to_sympy", "from_sympy", "compile_tree", "leaves_used", "from_pz_json",
    "to_pz_json", "simplify_tree", "canonical_key", "rank_key", "operator_table", "simplify_report",
    "tree_size", "tree_height",
    # extras
    "EPS", "EXP_MAX", "Leaf", "Operator", "CompiledTree", "Node", "default_pset", "to_infix", "to_latex",
    "to_node", "canonical_sympy", "strip_monotone", "is_nonneg", "leaf_symbol", "leaf_table",
    "read_sympy_form",
]
