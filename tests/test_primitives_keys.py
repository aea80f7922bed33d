"""Unit tests of the primitives package: SymPy bridge, OOS, canonical and rank keys, reports, Pruner-Zero JSON
and user-registered operators and leaves."""
from __future__ import annotations

import json
import random

import pytest
import sympy as sp
import torch
from deap import gp

import primitives as P
from primitives import registry

PZ_BEST_TREE = {  # data/best_tree.json of github.com/pprp/Pruner-Zero
    "data": "mul",
    "left": {"data": "abs", "left": {"data": "mul", "left": {"data": "W"}, "right": {"data": "W"}}},
    "right": {"data": "mms", "left": {"data": "G"}},
}


def leaves(out=6, inn=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, inn, generator=g), torch.rand(1, inn, generator=g) + 0.1,
            torch.rand(out, inn, generator=g) + 0.1)


@pytest.fixture
def scratch_registry():
    """Register test-only leaves/operators and remove them afterwards."""
    added_ops, added_leaves = [], []

    def op(*args, **kwargs):
        added_ops.append(args[0])
        return P.register_operator(*args, **kwargs)

    def leaf(*args, **kwargs):
        added_leaves.append(args[0])
        return P.register_leaf(*args, **kwargs)

    yield op, leaf
    for name in added_ops:
        P.OPERATORS.pop(name, None)
    for name in added_leaves:
        P.LEAVES.pop(name, None)
    registry._bump()


# ---------------------------------------------------------------- SymPy, keys, simplification

def test_to_sympy_and_back():
    W, X, G = (P.leaf_symbol(n) for n in "WXG")
    assert P.to_sympy("mul(abs(W), X)") == X * sp.Abs(W)
    assert P.to_sympy("mul(0.5, W)") == P.to_sympy("div(W, 2)") == W / 2
    for expr in ["mul(abs(mul(W, W)), mms(G))", "sigmoid(sub(W, X))", "divnorm(sqrt(G), W)",
                 "div(exp(W), add(X, 3))", "mul(sqr(W), mul(W, X))", "log(mul(X, G))", "neg(zsn(W))"]:
        tree = P.parse(expr)
        back = P.from_sympy(P.to_sympy(tree))
        assert P.rank_key(back) == P.rank_key(tree) and P.canonical_key(back) == P.canonical_key(tree), expr
    with pytest.raises(P.ExpressionError, match="unknown symbol"):
        P.from_sympy(sp.Symbol("Q") * W)
    with pytest.raises(P.ExpressionError):
        P.from_sympy(sp.cos(W))
    small = P.make_primitive_set(operators=("mul", "abs", "add"))
    assert P.to_string(P.from_sympy(W**2 - X, small)) == "add(mul(W, W), mul(-1, X))"


@pytest.mark.parametrize("a, b", [
    ("mul(W, X)", "mul(X, W)"),
    ("add(W, W)", "mul(2, W)"),
    ("mul(0.5, W)", "div(W, 2)"),
    ("mul(add(W, X), G)", "add(mul(W, G), mul(X, G))"),
    ("sub(W, neg(X))", "add(X, W)"),
    ("sqr(add(W, X))", "add(add(sqr(W), mul(2, mul(W, X))), sqr(X))"),
    ("exp(log(X))", "X"),
    ("abs(mul(W, X))", "mul(abs(W), X)"),
    ("mms(mul(3, G))", "mms(add(G, 1))"),
    ("div(W, W)", "1"),
    ("sqrt(sqr(W))", "abs(W)"),
    ("divnorm(W, mul(-2, G))", "mul(0.5, divnorm(W, G))"),
])
def test_canonical_key_equalities(a, b):
    assert P.canonical_key(a) == P.canonical_key(b)


@pytest.mark.parametrize("a, b", [("W", "abs(W)"), ("sub(W, X)", "sub(X, W)"), ("mms(W)", "mms(neg(W))"),
                                  ("exp(W)", "W"), ("sqr(W)", "W")])
def test_canonical_key_differences(a, b):
    assert P.canonical_key(a) != P.canonical_key(b)


@pytest.mark.parametrize("a, b", [
    ("mul(abs(W), X)", "log(mul(abs(W), X))"),
    ("mul(abs(W), X)", "sqrt(mul(abs(W), X))"),
    ("mul(abs(W), X)", "sqr(mul(W, X))"),
    ("mul(abs(W), X)", "mms(add(mul(3, mul(abs(W), X)), 1))"),
    ("W", "sigmoid(W)"), ("W", "tanh(zsn(exp(W)))"), ("W", "normalize(W)"), ("W", "add(W, 5)"),
    ("W", "mul(W, sqr(mul(W, W)))"),  # W**5, odd power
    ("W", "divnorm(W, G)"),  # dividing by a whole-matrix norm is a positive scaling
    ("neg(W)", "div(1, exp(W))"), ("neg(X)", "div(1, X)"), ("neg(W)", "mul(-3, W)"),
])
def test_rank_key_equalities(a, b):
    assert P.rank_key(a) == P.rank_key(b)


@pytest.mark.parametrize("a, b", [("W", "neg(W)"), ("W", "sqr(W)"), ("W", "abs(W)"), ("W", "log(W)"),
                                  ("mul(W, X)", "mul(W, G)"), ("W", "div(1, W)")])
def test_rank_key_differences(a, b):
    assert P.rank_key(a) != P.rank_key(b)


def test_rank_key_marks_reversal_and_constants():
    assert P.rank_key("neg(mul(abs(W), X))") == "-(X*Abs(W))"
    assert P.rank_key("div(1, mul(sqr(W), X))") == P.rank_key("neg(mul(sqr(W), X))") == "-(W**2*X)"
    assert P.rank_key("mul(abs(mul(W, W)), mms(G))") == "W**2*mms(G)"
    assert P.rank_key("sub(W, W)") == P.rank_key("mms(3)") == P.rank_key("3") == "0"
    assert P.rank_key("mms(X)") == "X"  # X is broadcast over rows: constant per column, not per row


@pytest.mark.parametrize("before, after", [
    ("neg(neg(W))", "W"),
    ("abs(abs(W))", "abs(W)"),
    ("abs(mul(X, G))", "mul(X, G)"),
    ("abs(sqr(W))", "sqr(W)"),
    ("exp(log(W))", "abs(W)"),
    ("exp(log(X))", "X"),
    ("log(exp(W))", "W"),
    ("sqrt(sqr(W))", "abs(W)"),
    ("sqr(sqrt(G))", "G"),
    ("sqr(neg(W))", "sqr(W)"),
    ("log(abs(W))", "log(W)"),
    ("sub(mul(W, X), mul(W, X))", "0"),
    ("div(add(W, G), add(W, G))", "1"),
    ("mms(mms(W))", "mms(W)"),
    ("mul(neg(neg(abs(abs(W)))), exp(log(X)))", "mul(abs(W), X)"),
    ("sub(mul(W, X), mul(X, W))", "sub(mul(W, X), mul(X, W))"),  # OOS is structural; keys see the rest
])
def test_oos(before, after):
    assert P.to_string(P.simplify_tree(before)) == after


def test_oos_exact_only_keeps_inexact_rules_out():
    assert P.to_string(P.simplify_tree("exp(log(W))", exact_only=True)) == "exp(log(W))"
    assert P.to_string(P.simplify_tree("div(W, W)", exact_only=True)) == "div(W, W)"
    assert P.to_string(P.simplify_tree("neg(neg(abs(abs(W))))", exact_only=True)) == "abs(W)"


def test_simplify_report():
    lines = P.simplify_report("mul(abs(mul(W, W)), exp(log(mms(G))))").splitlines()
    assert [line.split(":")[0] for line in lines] == ["tree", "simplified", "canonical", "rank"]
    assert lines[1] == "simplified: mul(abs(mul(W, W)), mms(G))"
    assert lines[2] == "canonical: W**2*mms(G)"
    with pytest.raises(P.ExpressionError):
        P.simplify_report("mul(W")


def test_operator_table_lists_everything():
    table = P.operator_table()
    lines = table.splitlines()
    assert lines[0].startswith("| name | arity |") and len(lines) == 2 + len(P.OPERATORS)
    for name in P.OPERATORS:
        assert f"| `{name}` |" in table
    assert "EPS" in table and "88" in table


# ---------------------------------------------------------------- Pruner-Zero JSON

def test_pz_json_round_trip(tmp_path):
    tree = P.from_pz_json(PZ_BEST_TREE)
    assert P.to_string(tree) == "mul(abs(mul(W, W)), mms(G))"
    assert P.to_pz_json(tree) == PZ_BEST_TREE
    path = tmp_path / "best_tree.json"
    path.write_text(json.dumps(PZ_BEST_TREE, indent=4))
    assert P.to_string(P.from_pz_json(path)) == P.to_string(P.from_pz_json(path.read_text()))


def test_pz_json_dialects():
    pz_div = {"data": "div", "left": {"data": "W"}, "right": {"data": "skp", "left": {"data": "G"}}}
    assert P.to_string(P.from_pz_json(pz_div)) == "divnorm(W, G)"
    assert P.to_string(P.from_pz_json(pz_div | {"right": {"data": "G"}}, dialect="native")) == "div(W, G)"
    assert P.to_string(P.from_pz_json({"data": "pow", "left": {"data": "X"}})) == "sqr(X)"
    assert P.to_pz_json("divnorm(W, G)")["data"] == "div"
    with pytest.raises(P.ExpressionError, match="no Pruner-Zero name"):
        P.to_pz_json("div(W, G)")
    native = P.to_pz_json("div(mul(W, 2.5), sigmoid(G))", dialect="native")
    assert native["left"]["right"] == {"data": 2.5}
    assert P.to_string(P.from_pz_json(native, dialect="native")) == "div(mul(W, 2.5), sigmoid(G))"
    assert P.to_string(P.from_pz_json({"data": "mul", "left": {"data": "W"}, "right": {"data": "100"}})) \
        == "mul(W, 100)"


@pytest.mark.parametrize("data, where", [
    ({"data": "mul", "left": {"data": "W"}}, "$"),
    ({"data": "mul", "left": {"data": "W"}, "right": {"data": "abs"}}, "$.right"),
    ({"data": "abs", "left": {"data": "foo"}}, "$.left"),
    ({"data": "W", "left": {"data": "X"}}, "$"),
    ({"left": {"data": "W"}}, "$"),
    ({"data": "abs", "left": {"data": "W"}, "colour": 1}, "$"),
])
def test_pz_json_errors(data, where):
    with pytest.raises(P.ExpressionError) as info:
        P.from_pz_json(data)
    assert info.value.position == where and f"at {where}" in str(info.value)


# ---------------------------------------------------------------- extensibility

def test_user_operator_works_everywhere(scratch_registry):
    register_op, _ = scratch_registry

    def softplus(x):
        """log(1 + exp(x))"""
        return torch.nn.functional.softplus(x)

    register_op("softplus_t", 1, softplus, sp.Function("softplus_t"), increasing=True, nonnegative=True)
    pset = P.make_primitive_set()
    assert "softplus_t" in pset.mapping
    random.seed(0)
    gp.genFull(pset, 1, 3)  # DEAP can draw it
    tree = P.parse("softplus_t(mul(W, X))")
    W, X, G = leaves()
    assert torch.allclose(P.compile_tree(tree)(W, X), torch.nn.functional.softplus(W * X))
    assert str(P.to_sympy(tree)) == "softplus_t(W*X)"
    assert P.to_string(P.from_sympy(P.to_sympy(tree))) == "softplus_t(mul(W, X))"
    assert P.rank_key(tree) == P.rank_key("mul(W, X)")  # increasing: stripped at the root
    assert P.to_string(P.simplify_tree("abs(softplus_t(W))")) == "softplus_t(W)"  # nonnegative
    assert "| `softplus_t` | 1 |" in P.operator_table() and "log(1 + exp(x))" in P.operator_table()
    assert P.to_pz_json(tree, dialect="native")["data"] == "softplus_t"


def test_user_operator_output_is_guarded(scratch_registry):
    register_op, _ = scratch_registry
    register_op("recip_t", 1, lambda x: 1.0 / x, lambda x: 1 / x, decreasing=True)
    out = P.compile_tree("recip_t(W)")(torch.tensor([[0.0, 2.0, -0.0]]))
    assert torch.isfinite(out).all() and out[0, 1] == 0.5
    assert P.rank_key("recip_t(exp(W))") == "-(W)"


def test_user_leaf(scratch_registry):
    _, register_leaf = scratch_registry
    register_leaf("Rt", "a test leaf", nonnegative=True)
    pset = P.make_primitive_set(leaves=("W", "X", "G", "Rt"))
    tree = P.parse("mul(abs(W), Rt)", pset)
    assert P.leaves_used(tree) == ("W", "Rt")
    W, X, G = leaves()
    assert torch.allclose(P.compile_tree(tree, pset)(W, X, G, G), W.abs() * G)
    assert P.to_string(P.simplify_tree("abs(Rt)")) == "Rt"
    assert P.canonical_key("mul(Rt, W)") == P.canonical_key("mul(W, Rt)")


def test_printed_keys_read_back_to_the_same_key():
    """``simplify`` and ``--metric`` accept the SymPy form the tool prints (through no ``eval``)."""
    pset = P.default_pset()
    random.seed(0)
    read = 0
    for _ in range(300):
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, 1, 4))
        key = P.canonical_key(tree)
        assert P.canonical_key(P.read_expression(key)) == key, key
        read += 1
    assert read == 300
    assert P.to_string(P.read_expression("W**2*X")) == "mul(X, sqr(W))"
    assert P.to_string(P.read_expression("mul(abs(W), X)")) == "mul(abs(W), X)"  # the registry grammar first


@pytest.mark.parametrize("text,needle", [
    ("W**2*Q", "unknown name 'Q'"), ("Abs(W, X)", "Abs"), ("W**", "unexpected"), ("__import__('os')", "unexpected character"),
    ("W**2 X", "unexpected 'X'"),
])
def test_bad_sympy_form_is_an_expression_error(text, needle):
    with pytest.raises(P.ExpressionError, match=needle):
        P.read_expression(text)
