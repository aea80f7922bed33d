"""The demo search on SmolLM2-135M: what the caches save, what an evaluation costs, what it finds.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/search.py [--config runs/smollm2-demo.toml]
        [--run-dir runs/bench-demo] [key=value ...]

Runs the search (or, with an existing ``--run-dir``, reads its results), then prints:
evaluations requested vs computed, seconds per computed evaluation vs one dense forward over the fitness
windows, and the chosen metric's WikiText-2 test perplexity beside Wanda's and GBLM's under the same protocol.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from evaluators import GBLM, Wanda
from evaluators.perplexity import window_nlls
from metric_search.config import load_config
from metric_search.search import MetricSearch
from metric_search.worker import evaluator_for, problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="runs/smollm2-demo.toml")
    parser.add_argument("--run-dir", default="runs/bench-demo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    started = time.perf_counter()
    if Path(args.run_dir, "config.json").exists():
        search = MetricSearch.resume(args.run_dir, args.overrides)
    else:
        search = MetricSearch(load_config(args.config, args.overrides)).fit(args.run_dir)
    wall = time.perf_counter() - started
    cfg = search.config
    evaluator = evaluator_for(problem(cfg.to_dict()))

    with torch.no_grad():
        window_nlls(evaluator.model, evaluator.windows[:1], cfg.batch_size)
        forwards = []
        for _ in range(3):
            t0 = time.perf_counter()
            window_nlls(evaluator.model, evaluator.windows, cfg.batch_size)
            forwards.append(time.perf_counter() - t0)
    dense_forward = statistics.median(forwards)
    computed = [r["seconds"] for r in search.evaluations_ if r["status"] == "ok" and not r["cached"]]
    counts = search.store.checkpoint()["counts"]

    # Baselines under the hall of fame's test protocol (final.json), on the same statistics.
    import json
    final = json.loads((search.run_dir_ / "final.json").read_text())
    proto = final["protocol"]
    from evaluators import evaluation_windows
    test, _ = evaluation_windows(evaluator.tokenizer, cfg.data, "test", proto["seqlen"], proto["n_windows"],
                                 cfg.data_dir or None)
    fitness_windows, evaluator.windows = evaluator.windows, test
    baselines = {}
    for pruner in (Wanda(), GBLM()):
        masks = evaluator.masks(lambda **leaves: pruner.score(leaves["W"], leaves))
        baselines[pruner.name] = math.exp(evaluator.perplexity_with(masks)[0].mean().item())
    evaluator.windows = fitness_windows

    print(f"\nrun {search.run_dir_} ({cfg.mode}, population {cfg.population_size}, iterations {cfg.iterations}, "
          f"seed {cfg.seed}); wall time {wall / 60:.1f} min")
    print("\n| quantity | value |\n|---|---|")
    print(f"| evaluations requested | {counts['requested']} |")
    print(f"| computed (forward passes) | {counts['computed']} |")
    print(f"| rank-key cache hits | {counts['key_hits']} |")
    print(f"| mask-hash cache hits | {counts['mask_hits']} |")
    print(f"| invalid / failed candidates | {counts['failed']} |")
    print(f"| seconds per computed evaluation (median) | {statistics.median(computed):.2f} |")
    print(f"| one dense forward over the fitness windows | {dense_forward:.2f} |")
    print(f"| ratio (target ≤ 1.10) | {statistics.median(computed) / dense_forward:.2f} |")
    print(f"\nWikiText-2 test, seqlen {proto['seqlen']}, {proto['n_windows']} windows, "
          f"{cfg.sparsity:g} {cfg.structure}, one-shot:\n")
    print("| metric | search fitness (valid) | test perplexity |\n|---|---|---|")
    for row in search.hall_of_fame_[: cfg.test_top_k]:
        mark = " (chosen)" if row["chosen"] else ""
        print(f"| `{row['expression']}`{mark} | {float(row['fitness']):.2f} | {row['test_perplexity']} |")
    for name, value in baselines.items():
        print(f"| {name} | - | {value:.2f} |")


if __name__ == "__main__":
    main()
