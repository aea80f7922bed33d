"""Property tests of the primitives package on random DEAP trees (height <= 6) and random tensors.

Ranking claims are checked with :func:`assert_same_order`: no pair of weights in a row may be ordered one
way by one score and the other way by the other (beyond a relative tolerance that absorbs float
rounding), and when neither score has (near-)ties the masks (50 % unstructured and 2:4) must be identical.
Ties created by saturation (``tanh``/``sigmoid`` of large values, the ``exp`` clamp) or by guards are the
documented exception to exact mask equality.
"""
from __future__ import annotations

import random
from collections import defaultdict

import torch
from deap import gp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import primitives as P

PSET = P.make_primitive_set()
FAST = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def random_tree(seed: int, min_height: int = 1, max_height: int = 6) -> gp.PrimitiveTree:
    """A DEAP genHalfAndHalf tree drawn with a seeded RNG (DEAP uses the global ``random`` module)."""
    state = random.getstate()
    random.seed(seed)
    try:
        return gp.PrimitiveTree(gp.genHalfAndHalf(PSET, min_height, max_height))
    finally:
        random.setstate(state)


def extreme_inputs(seed: int, out: int = 12, inn: int = 16) -> list[tuple[torch.Tensor, ...]]:
    """Zeros, negatives, constants, tiny and huge (up to ±3e38) float32 values, and mixtures."""
    g = torch.Generator().manual_seed(seed)

    def pick(values, shape):
        values = torch.tensor(values, dtype=torch.float32)
        return values[torch.randint(len(values), shape, generator=g)]

    sign = torch.randint(0, 2, (out, inn), generator=g) * 2.0 - 1
    mixed_w = torch.rand(out, inn, generator=g) * sign * pick([0, 1e-45, 1e-30, 1e-3, 1, 1e30, 3.4e38], (out, inn))
    mixed_w[0], mixed_w[1] = 0.0, -2.5
    mixed = (mixed_w, torch.rand(1, inn, generator=g) * pick([0, 1e-30, 1, 1e30, 3.4e38], (1, inn)),
             torch.rand(out, inn, generator=g) * pick([0, 1e-38, 1, 1e20, 3.4e38], (out, inn)))
    constant = (torch.full((out, inn), -0.75), torch.zeros(1, inn), torch.full((out, inn), 3.0))
    huge = (sign * 1e30, torch.full((1, inn), 3.4e38), torch.full((out, inn), 1e30))
    zeros = (torch.zeros(out, inn), torch.zeros(1, inn), torch.zeros(out, inn))
    return [mixed, constant, huge, zeros]


def well_conditioned(seed: int, dtype=torch.float64, out: int = 12, inn: int = 24) -> tuple[torch.Tensor, ...]:
    """|W| in [0.1, 1.6] with random signs, X in [0.5, 2], G in [0.1, 1]: no zeros in the leaves (guards can
    still act inside a tree, e.g. on sub(W, W); see :func:`guards_quiet`)."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (out, inn), generator=g) * 2.0 - 1
    W = (torch.rand(out, inn, generator=g, dtype=dtype) * 1.5 + 0.1) * sign.to(dtype)
    X = torch.rand(1, inn, generator=g, dtype=dtype) * 1.5 + 0.5
    return W, X, torch.rand(out, inn, generator=g, dtype=dtype) * 0.9 + 0.1


def guards_quiet(tree, W, X, G) -> bool:
    """True if no guard acts: every div denominator and log argument is away from 0, every exp argument
    is below the clamp, and nothing overflows. Algebraically equal trees can differ where a guard acts
    (1/(−x·0) vs −1/(x·0); mms always has a 0), which the keys ignore by design."""
    node = P.to_node(tree)
    todo = [node]
    while todo:
        n = todo.pop()
        todo.extend(n.args)
        if n.kind != "op":
            continue
        checks = {"div": (1, lambda v: v.abs().min() > 1e-20), "log": (0, lambda v: v.abs().min() > 1e-20),
                  "exp": (0, lambda v: v.max() < 80)}
        if n.name in checks:
            i, ok = checks[n.name]
            if not ok(P.compile_tree(P.nodes.from_node(n.args[i]))(W, X, G)):
                return False
        if n.name in ("sqr", "mul", "add", "sub", "div", "divnorm"):
            if P.compile_tree(P.nodes.from_node(n))(W, X, G).abs().max() > 1e300:
                return False
    return True


def unstructured_mask(scores: torch.Tensor, sparsity: float = 0.5) -> torch.Tensor:
    """True where pruned: the floor(in*s) lowest scores of each row, ties broken by position."""
    k = int(scores.shape[1] * sparsity)
    order = torch.argsort(scores, dim=1, stable=True)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, :k], True)


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """True where pruned: the n lowest of every m consecutive scores of a row."""
    groups = scores.reshape(scores.shape[0], -1, m)
    order = torch.argsort(groups, dim=2, stable=True)
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order[..., :n], True).reshape(scores.shape)


def _near_ties(a: torch.Tensor, rtol: float) -> bool:
    s = torch.sort(a, dim=1).values
    scale = a.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    return bool(((s[:, 1:] - s[:, :-1]) <= rtol * scale).any())


def assert_same_order(a: torch.Tensor, b: torch.Tensor, rtol: float, context: str) -> None:
    assert a.shape == b.shape, context
    a, b = a.double(), b.double()
    da, db = a[:, :, None] - a[:, None, :], b[:, :, None] - b[:, None, :]
    sa = rtol * a.abs().amax(dim=1).clamp_min(1e-300)[:, None, None]
    sb = rtol * b.abs().amax(dim=1).clamp_min(1e-300)[:, None, None]
    discordant = int(((da > sa) & (db < -sb)).sum())
    assert discordant == 0, f"{discordant} pairs ordered oppositely: {context}"
    if not _near_ties(a, rtol) and not _near_ties(b, rtol):
        assert torch.equal(unstructured_mask(a), unstructured_mask(b)), context
        assert torch.equal(nm_mask(a), nm_mask(b)), context


@FAST
@given(seeds)
def test_compiled_trees_are_finite(seed):
    tree = random_tree(seed)
    fns = [P.compile_tree(tree), P.compile_tree(P.simplify_tree(tree))]
    for W, X, G in extreme_inputs(seed):
        for fn in fns:
            out = fn(W, X, G)
            assert out.shape == W.shape and out.dtype == torch.float32, fn.expression
            assert torch.isfinite(out).all(), fn.expression


@FAST
@given(seeds)
def test_exact_oos_gives_identical_scores(seed):
    tree = random_tree(seed)
    simplified = P.simplify_tree(tree, exact_only=True)
    f, g = P.compile_tree(tree), P.compile_tree(simplified)
    for W, X, G in extreme_inputs(seed) + [well_conditioned(seed, torch.float32)]:
        assert torch.equal(f(W, X, G), g(W, X, G)), f"{P.to_string(tree)} -> {P.to_string(simplified)}"


@FAST
@given(seeds)
def test_oos_preserves_ranking(seed):
    tree = random_tree(seed)
    simplified = P.simplify_tree(tree)
    context = f"{P.to_string(tree)} -> {P.to_string(simplified)}"
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        W, X, G = well_conditioned(seed, dtype)
        if not guards_quiet(tree, W, X, G):
            continue
        assert_same_order(P.compile_tree(tree)(W, X, G), P.compile_tree(simplified)(W, X, G), rtol, context)


@SLOW
@given(seeds)
def test_monotone_wrappers_keep_rank_key_and_masks(seed):
    tree = random_tree(seed, 1, 4)
    text = P.to_string(tree)
    # rowrel scales each row by a positive number: the per-row masks (and so the rank key) ignore it
    variants = [f"{op}({text})" for op in ("exp", "tanh", "sigmoid", "mms", "zsn", "normalize", "rowrel")]
    variants += [f"add({text}, 3)", f"mul(2.5, {text})", f"divnorm({text}, G)", P.from_sympy(P.to_sympy(tree)),
                 P.simplify_tree(tree)]
    if P.is_nonneg(P.to_node(tree)):
        variants += [f"sqrt({text})", f"sqr({text})", f"log({text})"]
    key = P.rank_key(tree)
    W, X, G = well_conditioned(seed)
    base = P.compile_tree(tree)(W, X, G)
    for variant in variants:
        variant = P.parse(variant) if isinstance(variant, str) else variant
        assert P.rank_key(variant) == key, (P.to_string(variant), text)
        if guards_quiet(tree, W, X, G) and guards_quiet(variant, W, X, G):
            assert_same_order(base, P.compile_tree(variant)(W, X, G), 1e-9, f"{text} vs {P.to_string(variant)}")
    assert P.rank_key(f"neg({text})") != key or key == "0"


@SLOW
@given(seeds)
def test_equal_rank_keys_give_equal_masks(seed):
    groups = defaultdict(list)
    for i in range(40):
        tree = random_tree(seed * 40 + i, 1, 3)
        groups[P.rank_key(tree)].append(tree)
    W, X, G = well_conditioned(seed)
    for key, trees in groups.items():
        trees = [t for t in trees if guards_quiet(t, W, X, G)]
        if len(trees) < 2:
            continue
        base = P.compile_tree(trees[0])(W, X, G)
        for other in trees[1:]:
            context = f"{key}: {P.to_string(trees[0])} vs {P.to_string(other)}"
            assert_same_order(base, P.compile_tree(other)(W, X, G), 1e-9, context)


@SLOW
@given(seeds)
def test_round_trips(seed):
    tree = random_tree(seed)
    text = P.to_string(tree)
    assert text == str(tree)
    assert P.to_string(P.parse(text)) == text
    assert P.to_string(P.parse(P.to_infix(tree))) == text
    assert P.to_string(P.from_pz_json(P.to_pz_json(tree, dialect="native"), dialect="native")) == text
    assert P.rank_key(P.from_sympy(P.to_sympy(tree))) == P.rank_key(tree), text
    assert P.tree_size(tree) == len(tree) and P.tree_height(tree) <= 6
    assert set(P.leaves_used(tree)) == {n.value for n in tree if isinstance(getattr(n, "value", None), str)}
