"""This checkout's fitness evaluator against another checkout's, in one process, on the same model and statistics.

    git worktree add /tmp/base <commit>
    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/evaluator_ab.py /tmp/base [--repeats 6]

Loads the demo problem (``runs/smollm2-demo.toml``: SmolLM2-135M, 16 × 512 fitness windows) once, builds both
evaluators over the same model and statistics, and times Wanda's evaluation (plain, and with the proxies a
search records) and a dense forward in rotating order, so that load on the machine hits all alike. It checks
that both give the same fitness and mask hash, and prints the medians and the ratios to the forward.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from evaluators.perplexity import window_nlls
from metric_search.config import load_config
from metric_search.worker import evaluator_for, problem


def other_evaluators(tree: Path):
    """The other checkout's ``evaluators.fitness`` module, its package imported under another name."""
    spec = importlib.util.spec_from_file_location("base_evaluators", tree / "evaluators" / "__init__.py",
                                                  submodule_search_locations=[str(tree / "evaluators")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_evaluators"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("base_evaluators.fitness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout's root (a git worktree)")
    parser.add_argument("--config", default="runs/smollm2-demo.toml")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    cfg = load_config(args.config, []).settled()
    ours = evaluator_for(problem(cfg.to_dict()), progress=True)
    base = other_evaluators(args.base).FitnessEvaluator(ours.model, ours.stats, ours.windows, ours.sparsity, ours.structure,
                                                ours.batch_size)
    fn = lambda W, X, G: W.abs() * X  # noqa: E731
    a, b = ours.evaluate(fn), base.evaluate(fn)
    assert (a.fitness, a.mask_hash) == (b.fitness, b.mask_hash), "the two evaluators disagree"

    def run(evaluator, proxies):
        def work():
            if evaluator is ours:
                evaluator.evaluate(fn, proxies=proxies)
            else:  # a checkout from before EvaluationRequest took its proxies as an attribute
                evaluator.proxies = proxies
                evaluator.evaluate(fn)
        return work
    works = [("this checkout", run(ours, False)), ("base", run(base, False)),
             ("this checkout, proxies", run(ours, True)), ("base, proxies", run(base, True)),
             ("dense forward", lambda: window_nlls(ours.model, ours.windows, ours.batch_size))]
    times: dict[str, list[float]] = {name: [] for name, _ in works}
    with torch.no_grad():
        for rep in range(args.repeats):
            for name, work in works[rep % len(works):] + works[:rep % len(works)]:
                start = time.perf_counter()
                work()
                times[name].append(time.perf_counter() - start)
    forward = statistics.median(times["dense forward"])
    print(f"\nbase: {args.base}; same fitness {a.fitness:.4f} and mask hash {a.mask_hash}")
    print(f"\n| step (median of {args.repeats}) | seconds | / dense forward |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / forward:.3f} |")


if __name__ == "__main__":
    main()
