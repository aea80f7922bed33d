"""The demo search on SmolLM2-135M: what the caches save, what an evaluation costs, what it finds.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/search.py [--config runs/smollm2-demo.toml]
        [--run-dir runs/bench-demo] [key=value ...]

Runs the search (with an existing ``--run-dir``: reads a finished run's results, or resumes an unfinished
one or one extended by ``iterations=N``), then prints:
evaluations requested vs computed, seconds per computed evaluation vs one dense forward over the fitness
windows, and the chosen metric's WikiText-2 test perplexity beside Wanda's and GBLM's (α = 100) under the
same protocol, paired against each.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from evaluators import GBLM, Wanda
from evaluators.fitness import Race
from evaluators.perplexity import window_nlls
from metric_search.config import load_config
from metric_search.final import paired_difference, test_window_nlls
from metric_search.search import MetricSearch
from metric_search.worker import evaluator_for, problem
from primitives import compile_tree, parse

TIMING_REPEATS = 6  # rounds of the three timed steps, rotating which goes first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="runs/smollm2-demo.toml")
    parser.add_argument("--run-dir", default="runs/bench-demo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    started = time.perf_counter()
    if Path(args.run_dir, "final.json").exists() and not args.overrides:
        search = MetricSearch.from_run(args.run_dir)  # a finished run: read its results
    elif Path(args.run_dir, "config.json").exists():
        search = MetricSearch.resume(args.run_dir, args.overrides)
    else:
        search = MetricSearch(load_config(args.config, args.overrides)).fit(args.run_dir)
    wall = time.perf_counter() - started
    if not search.progress:  # read from disk: report the loop's own time from the logbook
        wall = float(search.logbook_[-1]["elapsed_s"])
    cfg = search.config
    evaluator = evaluator_for(problem(cfg.to_dict()))

    # One full evaluation of the chosen metric, plain (no cache, racing, proxies) and as this search ran a
    # complete one (its proxies; with racing, windows one at a time against a rival it never loses to), against
    # one dense forward over the same fitness windows: interleaved in this process in rotating order, so that
    # load and drift hit all three alike.
    chosen_fn = compile_tree(parse(search.hall_of_fame_[0]["expression"]))
    never_lost = Race(1e9, cfg.race_min_windows, cfg.race_z, cfg.race_chunk or 1) if cfg.racing else None
    timings: dict[str, list[float]] = {"plain": [], "as searched": [], "forward": []}

    def plain():
        evaluator.evaluate(chosen_fn)

    def as_searched():
        evaluator.evaluate(chosen_fn, race=never_lost, proxies=cfg.proxies or cfg.proxy_gate)

    works = [("plain", plain), ("as searched", as_searched),
             ("forward", lambda: window_nlls(evaluator.model, evaluator.windows, cfg.batch_size))]
    with torch.no_grad():
        evaluator.evaluate(chosen_fn, stop=1)  # first touch of the weights and buffers is not what a search pays
        for rep in range(TIMING_REPEATS):
            for name, work in works[rep % 3:] + works[:rep % 3]:
                t0 = time.perf_counter()
                work()
                timings[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(values) for name, values in timings.items()}
    computed = [r["seconds"] for r in search.evaluations_ if r["status"] == "ok" and not r["cached"]]
    counts = search.store.checkpoint()["counts"]

    # The chosen metric and the baselines under the run's test protocol (test_seqlen, test_windows), on the same
    # statistics, window by window: the paired NLL difference against Wanda says whether a gap is noise.
    contenders = {f"`{search.hall_of_fame_[0]['expression']}` (chosen)": chosen_fn}
    for pruner in (Wanda(), GBLM()):
        contenders[pruner.name] = lambda pruner=pruner, **leaves: pruner.score(leaves["W"], leaves)
    test_nll, spec = test_window_nlls(evaluator, cfg, contenders)
    proto = spec.describe()
    print(f"\nrun {search.run_dir_} ({cfg.mode}, population {cfg.population_size}, iterations {cfg.iterations}, "
          f"seed {cfg.seed}); wall time {wall / 60:.1f} min"
          + (" (search loop, from the logbook)" if not search.progress else ""))
    print("\n| quantity | value |\n|---|---|")
    print(f"| evaluations requested | {counts['requested']} |")
    print(f"| computed (forward passes) | {counts['computed']} |")
    print(f"| rank-key cache hits | {counts['key_hits']} |")
    print(f"| mask-hash cache hits | {counts['mask_hits']} |")
    print(f"| invalid / failed candidates | {counts['failed']} |")
    print(f"| seconds per complete evaluation during the search (median) | {statistics.median(computed):.2f} |")
    print(f"| one full evaluation of the chosen metric, plain (median of {TIMING_REPEATS}) | {median['plain']:.2f} |")
    print(f"| the same, as the search ran it (proxies, racing one window at a time; median of {TIMING_REPEATS}) "
          f"| {median['as searched']:.2f} |")
    print(f"| one dense forward over the fitness windows (median of {TIMING_REPEATS}) | {median['forward']:.2f} |")
    print(f"| ratio, plain (target ≤ 1.10) | {median['plain'] / median['forward']:.2f} |")
    print(f"| ratio, as searched (target ≤ 1.10) | {median['as searched'] / median['forward']:.2f} |")
    print("\nEach timing (s), in rotating order: " + "; ".join(
        f"{name} {' '.join(f'{t:.2f}' for t in values)}" for name, values in timings.items()))
    print(f"\nWikiText-2 test, seqlen {proto['seqlen']}, {proto['n_windows']} windows, "
          f"{cfg.sparsity:g} {cfg.structure}, one-shot:\n")
    print("| metric | search fitness (valid) | test perplexity |\n|---|---|---|")
    for row in search.hall_of_fame_[: cfg.test_top_k]:
        mark = " (chosen)" if row["chosen"] else ""
        print(f"| `{row['expression']}`{mark} | {float(row['fitness']):.2f} | {row['test_perplexity']} |")
    fitness = {name: evaluator.evaluate(fn).fitness for name, fn in contenders.items()}  # same fitness windows
    print(f"\nPaired on the same {proto['n_windows']} test windows (mean per-window NLL difference ± standard error; "
          f"negative = better); GBLM as its authors run it (α = 100 on G):\n")
    print("| metric | search fitness (valid) | test perplexity | NLL difference vs Wanda | NLL difference vs GBLM |\n"
          "|---|---|---|---|---|")
    for name, nll in test_nll.items():
        gaps = []
        for reference in ("wanda", "gblm"):
            mean, se = paired_difference(nll, test_nll[reference])
            gaps.append("-" if name == reference else f"{mean:+.4f} ± {se:.4f}")
        print(f"| {name} | {fitness[name]:.2f} | {math.exp(nll.mean().item()):.2f} | {gaps[0]} | {gaps[1]} |")


if __name__ == "__main__":
    main()
