"""Robustness, deduplication and speed of the primitives package.

    python benchmarks/search_space.py [--trees 10000] [--seed 0] [--threads 1]

1. Draws random trees (DEAP ``genHalfAndHalf``, height 1..6, every registered operator, leaves W, X, G),
   compiles each one and runs it on four input sets (64×48, X of shape 1×48): well-conditioned, mixed
   extremes (zeros, 1e-30, ±1e30, ±3e38), constant/zero tensors, and huge values only. Counts exceptions and
   non-finite or wrongly shaped outputs (target: 0 and 0), and how many trees collapse into an earlier
   tree's canonical key / rank key (work a cached search does not repeat).
2. Times compiled trees against hand-written torch on 1536×576 tensors (median of interleaved repeats).
"""
from __future__ import annotations

import argparse
import collections
import random
import statistics
import sys
import time
from pathlib import Path

# This file is called primitives.py: make sure "import primitives" finds the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from deap import gp  # noqa: E402

import primitives as P  # noqa: E402


def input_sets(out: int = 64, inn: int = 48, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)

    def pick(values, shape):
        values = torch.tensor(values)
        return values[torch.randint(len(values), shape, generator=g)]

    well = (torch.randn(out, inn, generator=g) * 0.05, torch.rand(1, inn, generator=g) * 2 + 0.1,
            torch.rand(out, inn, generator=g) * 1e-2 + 1e-4)
    sign = torch.randint(0, 2, (out, inn), generator=g) * 2.0 - 1
    mixed_w = torch.rand(out, inn, generator=g) * sign * pick([0.0, 1e-30, 1e-3, 1.0, 1e30, 3e38], (out, inn))
    mixed_w[0] = 0.0
    mixed_w[1] = 5.0
    mixed = (mixed_w, torch.rand(1, inn, generator=g) * pick([0.0, 1e-30, 1.0, 1e30, 3.4e38], (1, inn)),
             torch.rand(out, inn, generator=g) * pick([0.0, 1e-38, 1.0, 1e20, 3.4e38], (out, inn)))
    constant = (torch.full((out, inn), 0.5), torch.zeros(1, inn), torch.zeros(out, inn))
    huge = (sign * 1e30, torch.full((1, inn), 3e38), torch.full((out, inn), 1e30))
    return {"well-conditioned": well, "mixed extremes": mixed, "constant/zero": constant, "huge": huge}


def robustness(n_trees: int, seed: int) -> dict:
    pset = P.make_primitive_set()
    random.seed(seed)
    inputs = input_sets(seed=seed)
    stats = {"trees": n_trees, "exceptions": 0, "non_finite": 0, "bad_shape": 0, "oos_changed": 0}
    strings, canon, rank = set(), set(), set()
    dup = {"string": 0, "canonical": 0, "rank": 0}
    t_run = t_keys = 0.0
    examples, rank_list = [], []
    for _ in range(n_trees):
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, 1, 6))
        text = P.to_string(tree)
        start = time.perf_counter()
        try:
            fn = P.compile_tree(tree)
            for name, (W, X, G) in inputs.items():
                out = fn(W, X, G)
                if out.shape != W.shape:
                    stats["bad_shape"] += 1
                elif not torch.isfinite(out).all():
                    stats["non_finite"] += 1
                    examples.append(f"non-finite on {name}: {text}")
        except Exception as err:  # counted, and shown below: the target is zero
            stats["exceptions"] += 1
            examples.append(f"{type(err).__name__}: {err} in {text}")
        t_run += time.perf_counter() - start
        start = time.perf_counter()
        simplified = P.to_string(P.simplify_tree(tree))
        keys = {"string": text, "canonical": P.canonical_key(tree), "rank": P.rank_key(tree)}
        t_keys += time.perf_counter() - start
        stats["oos_changed"] += simplified != text
        rank_list.append(keys["rank"])
        for kind, seen in (("string", strings), ("canonical", canon), ("rank", rank)):
            dup[kind] += keys[kind] in seen
            seen.add(keys[kind])
    stats.update(seconds_compile_run=t_run, seconds_keys=t_keys, dup=dup, examples=examples[:5],
                 top_rank=collections.Counter(rank_list).most_common(5),
                 unique={"string": len(strings), "canonical": len(canon), "rank": len(rank)})
    return stats


def _mms(t):
    lo, hi = torch.aminmax(t)
    return (t - lo) / (hi - lo)


def _zsn(t):
    return (t - t.mean()) / t.std(correction=0)


HANDWRITTEN = {
    "Wanda": ("mul(abs(W), X)", lambda W, X, G: W.abs() * X),
    "Pruner-Zero": ("mul(abs(mul(W, W)), mms(G))", lambda W, X, G: (W * W).abs() * _mms(G)),
    "GBLM": ("add(mul(abs(W), X), mul(abs(W), G))", lambda W, X, G: W.abs() * X + W.abs() * G),
    "deeper": ("div(mul(log(W), zsn(G)), add(exp(X), tanh(W)))",
               lambda W, X, G: torch.log(W.abs()) * _zsn(G) / (torch.exp(X) + torch.tanh(W))),
}


def speed(repeats: int, seed: int) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(1536, 576, generator=g) * 0.05
    X = torch.rand(1, 576, generator=g) * 2 + 0.1
    G = torch.rand(1536, 576, generator=g) * 1e-2 + 1e-4
    rows = []
    for label, (expr, hand) in HANDWRITTEN.items():
        fn = P.compile_tree(expr)
        expected = hand(W, X, G)
        deviation = ((fn(W, X, G) - expected).abs().max() / expected.abs().max()).item()
        a, b = [], []
        for _ in range(3):  # warm-up
            fn(W, X, G), hand(W, X, G)
        for _ in range(repeats):  # interleaved, so load from other processes hits both alike
            t = time.perf_counter()
            fn(W, X, G)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            hand(W, X, G)
            b.append(time.perf_counter() - t)
        ca, hb = statistics.median(a), statistics.median(b)
        rows.append((label, expr, ca * 1e3, hb * 1e3, ca / hb, deviation))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier timings)")
    parser.add_argument("--repeats", type=int, default=51)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    s = robustness(args.trees, args.seed)
    n = s["trees"]
    print(f"## Random trees (genHalfAndHalf, height 1..6, seed {args.seed}, {len(P.OPERATORS)} operators, "
          f"4 input sets of 64×48)\n")
    print("| metric | value |\n| --- | --- |")
    print(f"| trees | {n} |")
    print(f"| exceptions (target 0) | {s['exceptions']} |")
    print(f"| non-finite outputs (target 0) | {s['non_finite']} |")
    print(f"| wrongly shaped outputs (target 0) | {s['bad_shape']} |")
    print(f"| seconds, compile + run on 4 input sets | {s['seconds_compile_run']:.1f} |")
    print(f"| seconds, OOS + canonical key + rank key | {s['seconds_keys']:.1f} |")
    print(f"| trees changed by OOS | {s['oos_changed'] / n:.1%} |")
    print(f"| identical string to an earlier tree | {s['dup']['string'] / n:.1%} |")
    print(f"| canonical key collapses into an earlier key | {s['dup']['canonical'] / n:.1%} "
          f"({s['unique']['canonical']} distinct) |")
    print(f"| rank key collapses into an earlier key | {s['dup']['rank'] / n:.1%} "
          f"({s['unique']['rank']} distinct) |")
    top = ", ".join(f"`{k}` ×{c}" for k, c in s["top_rank"])
    print(f"| most frequent rank keys | {top} |")
    for line in s["examples"]:
        print(f"\n    {line}")

    print(f"\n## Compiled vs hand-written torch (1536×576, median of {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} thread(s))\n")
    print("| metric | expression | compiled ms | hand-written ms | ratio (target ≤ 2) | max abs diff / max abs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, expr, ca, hb, ratio, deviation in speed(args.repeats, args.seed):
        print(f"| {label} | `{expr}` | {ca:.2f} | {hb:.2f} | {ratio:.2f} | {deviation:.1e} |")


if __name__ == "__main__":
    main()
