"""Unit tests of the primitives package: registry, primitive sets, parsing, string forms and compilation."""
from __future__ import annotations

import math
import random

import pytest
import sympy as sp
import torch
from deap import gp

import primitives as P


def leaves(out=6, inn=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, inn, generator=g), torch.rand(1, inn, generator=g) + 0.1,
            torch.rand(out, inn, generator=g) + 0.1)


# ---------------------------------------------------------------- registry, leaves, primitive sets

def test_registry_contents():
    assert list(P.LEAVES)[:3] == ["W", "X", "G"]
    assert not P.LEAVES["W"].nonnegative and P.LEAVES["X"].nonnegative and P.LEAVES["G"].nonnegative
    assert P.LEAVES["X"].shape == "(1, in)"
    unary = {"sqr", "neg", "abs", "log", "exp", "sqrt", "tanh", "sigmoid", "mms", "zsn", "normalize", "rowrel",
             "colrel"}
    binary = {"add", "sub", "mul", "div", "divnorm"}
    assert unary | binary <= set(P.OPERATORS)
    assert all(P.OPERATORS[n].arity == 1 for n in unary) and all(P.OPERATORS[n].arity == 2 for n in binary)


def test_register_rejects_bad_input():
    with pytest.raises(ValueError):
        P.register_operator("add", 2, torch.add, lambda x, y: x + y)
    with pytest.raises(ValueError):
        P.register_operator("three", 3, torch.add, lambda x, y: x + y)
    with pytest.raises(ValueError):
        P.register_operator("W", 1, torch.abs, sp.Abs)
    with pytest.raises(TypeError):
        P.register_operator("odd_prop", 1, torch.abs, sp.Abs, monotone_ish=True)
    with pytest.raises(ValueError):
        P.register_leaf("not a name", "x")


def test_make_primitive_set():
    pset = P.make_primitive_set()
    assert pset.arguments == ["W", "X", "G"]
    assert set(pset.op_names) == set(P.OPERATORS)
    small = P.make_primitive_set(leaves=("W", "X"), operators=("mul", "abs"))
    assert small.arguments == ["W", "X"] and set(small.op_names) == {"mul", "abs"}
    random.seed(3)
    tree = gp.PrimitiveTree(gp.genHalfAndHalf(small, 1, 4))
    assert set(P.leaves_used(tree)) <= {"W", "X"}
    with pytest.raises(ValueError):
        P.make_primitive_set(leaves=("W", "Q"))
    with pytest.raises(ValueError):
        P.make_primitive_set(operators=("mul", "nope"))
    consts = P.make_primitive_set(constants=(2, 0.5))
    assert "2" in consts.mapping and "0.5" in consts.mapping


def test_parse_respects_pset():
    small = P.make_primitive_set(leaves=("W", "X"), operators=("mul", "abs"))
    assert P.to_string(P.parse("abs(W) * X", small)) == "mul(abs(W), X)"
    with pytest.raises(P.ExpressionError, match="'add'.*not in this primitive set.*position 2"):
        P.parse("W + X", small)
    with pytest.raises(P.ExpressionError, match="leaf 'G' is not in this primitive set at position 7"):
        P.parse("mul(W, G)", small)


# ---------------------------------------------------------------- parsing and strings

@pytest.mark.parametrize("expr, problem, pos", [
    ("", "empty expression", 0),
    ("   ", "empty expression", 3),
    ("foo(W)", "unknown name 'foo'", 0),
    ("mul(W, Q)", "unknown name 'Q'", 7),
    ("mul(W)", "operator 'mul' takes 2 arguments, got 1", 0),
    ("abs(W, X)", "operator 'abs' takes 1 argument, got 2", 0),
    ("abs", "operator 'abs' needs 1 argument in parentheses", 0),
    ("mul(W, X", "unbalanced parenthesis: '(' is never closed", 3),
    ("(W + X", "unbalanced parenthesis: '(' is never closed", 0),
    ("abs(W))", "unbalanced parenthesis: unexpected ')'", 6),
    ("W X", "unexpected 'X' after a complete expression", 2),
    ("mul(W, X) G", "unexpected 'G' after a complete expression", 10),
    ("W +", "unexpected end of expression", 3),
    ("W(1)", "leaf 'W' cannot be called like an operator", 0),
    ("mul(W X)", "expected ',' or ')' but found 'X'", 6),
    ("W $ X", "unexpected character '$'", 2),
    ("1e999 * W", "not finite", 0),
    ("W * 1" + "0" * 400, "not finite as a float", 4),
])
def test_parse_errors(expr, problem, pos):
    with pytest.raises(P.ExpressionError) as info:
        P.parse(expr)
    message = str(info.value)
    assert problem in message and f"at position {pos}" in message, message
    assert "\n" not in message and info.value.position == pos
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text, expected", [
    ("mul(abs(W), X)", "mul(abs(W), X)"),
    ("abs(W) * X + G", "add(mul(abs(W), X), G)"),
    ("abs(W) * (X + G)", "mul(abs(W), add(X, G))"),
    ("W - X - G", "sub(sub(W, X), G)"),
    ("W - (X - G)", "sub(W, sub(X, G))"),
    ("W / X / G", "div(div(W, X), G)"),
    ("-W * X", "mul(neg(W), X)"),
    ("-(W * X)", "neg(mul(W, X))"),
    ("- -W", "neg(neg(W))"),
    ("-2 * W", "mul(-2, W)"),
    ("-(2) * W", "mul(neg(2), W)"),
    ("+W", "W"),
    ("add(mul(W, X), mul(100, G))", "add(mul(W, X), mul(100, G))"),
    ("mul(0.5, W) + 1e-3", "add(mul(0.5, W), 0.001)"),
    ("sqr(W)/ X", "div(sqr(W), X)"),
])
def test_parse_forms(text, expected):
    tree = P.parse(text)
    assert isinstance(tree, gp.PrimitiveTree)
    assert P.to_string(tree) == expected == str(tree)
    assert P.to_string(P.parse(P.to_string(tree))) == expected  # string → tree → string
    assert P.to_string(P.parse(P.to_infix(tree))) == expected  # infix rendering reads back


def test_constants_are_deap_terminals():
    tree = P.parse("add(mul(W, X), mul(100, G))")
    consts = [n for n in tree if isinstance(n, gp.Terminal) and not isinstance(n.value, str)]
    assert [c.value for c in consts] == [100]
    W, X, G = leaves()
    assert torch.allclose(P.compile_tree(tree)(W, X, G), W * X + 100 * G)


def test_sizes_and_leaves():
    tree = P.parse("mul(abs(mul(W, W)), mms(G))")
    assert P.tree_size(tree) == 7 and P.tree_height(tree) == 3
    assert P.leaves_used(tree) == ("W", "G")
    assert P.tree_height("W") == 0 and P.leaves_used("mul(X, 2)") == ("X",)


def test_latex_rendering():
    assert P.to_latex("mul(abs(W), X)") == r"\left|W\right| \cdot X"
    assert P.to_latex("mul(add(W, X), G)") == r"\left(W + X\right) \cdot G"
    assert P.to_latex("div(W, sqr(X))") == r"\frac{W}{X^{2}}"


# ---------------------------------------------------------------- compilation

def test_compile_matches_handwritten():
    W, X, G = leaves()
    cases = {
        "mul(abs(W), X)": W.abs() * X,
        "mul(abs(mul(W, W)), mms(G))": (W * W).abs() * (G - G.min()) / (G.max() - G.min()),
        "add(sqrt(G), tanh(W))": G.sqrt() + torch.tanh(W),
        "div(W, X)": W / X,
        "sub(exp(W), log(G))": torch.exp(W) - torch.log(G),
        "zsn(W)": (W - W.mean()) / W.std(correction=0),
        "normalize(W)": W / torch.linalg.norm(W),
        "divnorm(W, G)": W / torch.linalg.norm(G),
        "sigmoid(sqr(W))": torch.sigmoid(W * W),
        "rowrel(W)": W / W.abs().sum(1, keepdim=True),
        "colrel(G)": G / G.sum(0, keepdim=True),
    }
    for expr, expected in cases.items():
        assert torch.allclose(P.compile_tree(expr)(W, X, G), expected, rtol=1e-5, atol=1e-6), expr


def test_compile_calling_conventions():
    W, X, G = leaves()
    f = P.compile_tree(P.parse("mul(abs(W), X)"))
    assert f.leaves == ("W", "X")
    expected = W.abs() * X
    assert torch.equal(f(W, X), expected) and torch.equal(f(W=W, X=X), expected)
    assert torch.equal(f(W, X, G), expected) and torch.equal(f(W=W, X=X, G=G, extra=5), expected)
    with pytest.raises(TypeError, match="needs leaf tensor"):
        f(W=W)
    out = P.compile_tree("X")(W=W, X=X)  # only X is read; the shape comes from every passed leaf
    assert out.shape == W.shape and torch.equal(out, X.expand_as(W))
    assert P.compile_tree("sqr(X)")(X=X).shape == X.shape
    same = P.compile_tree("W")(W)
    assert torch.equal(same, W) and same.data_ptr() != W.data_ptr()  # never a view of an input
    assert torch.equal(P.compile_tree("3")(W), torch.full_like(W, 3.0))
    half = P.compile_tree("mul(W, X)")(W.half(), X.half())
    assert half.dtype == torch.float32
    assert P.compile_tree("mul(W, X)")(W.double(), X.double()).dtype == torch.float64


def test_compile_does_not_modify_inputs():
    W, X, G = leaves()
    W0, X0, G0 = W.clone(), X.clone(), G.clone()
    P.compile_tree("add(mul(abs(neg(W)), X), div(sqr(G), sub(W, G)))")(W, X, G)
    assert torch.equal(W, W0) and torch.equal(X, X0) and torch.equal(G, G0)


def test_whole_matrix_ops_see_the_broadcast_matrix():
    W, X, G = leaves()
    full = X.expand_as(W)
    for op in ("mms", "zsn", "normalize", "rowrel", "colrel"):
        got = P.compile_tree(f"{op}(X)")(W=W, X=X)
        assert torch.allclose(got, P.OPERATORS[op].torch_fn(full.contiguous())), op


def test_guards():
    big, tiny = torch.tensor([[1e30, -1e30, 3e38, 0.0]]), torch.tensor([[0.0, -0.0, 1e-45, 5.0]])
    for name, op in P.OPERATORS.items():
        args = (big,) if op.arity == 1 else (big, tiny)
        assert torch.isfinite(op.torch_fn(*args)).all(), name
        assert torch.isfinite(op.torch_fn(*reversed(args)) if op.arity == 2 else op.torch_fn(tiny)).all(), name
    const = torch.full((3, 4), 7.0)
    for name in ("mms", "zsn"):
        assert torch.equal(P.OPERATORS[name].torch_fn(const), torch.zeros_like(const))
    assert torch.equal(P.OPERATORS["normalize"].torch_fn(torch.zeros(2, 2)), torch.zeros(2, 2))
    div = P.OPERATORS["div"].torch_fn
    assert div(torch.tensor([1.0]), torch.tensor([0.0])).item() > 0
    assert div(torch.tensor([1.0]), torch.tensor([-0.0])).item() > 0  # -0.0 (e.g. 0 * -3) is a zero too
    assert div(torch.tensor([1.0]), torch.tensor([-1e-35])).item() < 0
    assert div(torch.tensor([6.0]), torch.tensor([-3.0])).item() == -2.0
    assert P.OPERATORS["log"].torch_fn(torch.tensor([0.0])).item() == pytest.approx(math.log(1e-30), rel=1e-6)
    assert P.OPERATORS["mms"].torch_fn(torch.tensor([-3e38, 0.0, 3e38])).tolist() == [0.0, 0.5, 1.0]
