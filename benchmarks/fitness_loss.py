"""Which search fitness ranks candidates more like WikiText-2 test perplexity: perplexity or KL?

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/fitness_loss.py --run runs/bench-demo \
        [--candidates 64] [--fitness-windows 8] [--test-windows 32]

Takes the distinct valid candidates a recorded run evaluated (a seeded random sample of ``--candidates`` of
them, plus the known metrics), and measures each on the same problem as the run (model, calibration,
sparsity) three ways: the perplexity fitness and the KL fitness on the **same** ``--fitness-windows``
fitness windows (one forward each, so the same cost), and the WikiText-2 **test** perplexity on
``--test-windows`` windows. Prints Spearman's ρ of each fitness against test perplexity, over all candidates,
the better half and the competitive ones (by test perplexity), where a search's decisions are made.
``--table FILE`` prints the table again from an earlier ``--output`` file.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import scipy.stats as st

from metric_search.config import LEGACY_DEFAULTS, load_config
from metric_search.final import test_window_nlls
from metric_search.toolbox import KNOWN_METRICS
from metric_search.worker import evaluator_for, problem
from primitives import compile_tree, parse


def candidates(run: Path, n: int, seed: int) -> list[str]:
    """Up to ``n`` distinct (by canonical key) valid expressions of the run, plus the known metrics."""
    by_key = {}
    for line in (run / "evaluations.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["status"] in ("ok", "raced", "halved", "gated") and row["canonical_key"] not in by_key:
            by_key[row["canonical_key"]] = row["expression"]
    picked = sorted(by_key.values())
    random.Random(seed).shuffle(picked)
    known = [e for e in KNOWN_METRICS.values()]
    return known + [e for e in picked if e not in known][:n]


def spearman(x, y) -> str:
    rho, p = st.spearmanr(x, y)
    return f"{rho:.3f} (p = {p:.2g})"


def table(rows: list[dict]) -> None:
    """Spearman's ρ of each fitness against test perplexity: over all rows, the better half by test perplexity,
    and the competitive ones (test perplexity within 25% of the best), where a search's decisions are made."""
    ppl = np.array([r["fitness_ppl"] for r in rows])
    kl = np.array([r["mean_kl"] for r in rows])
    test = np.array([r["test_ppl"] for r in rows])
    subsets = {"all": test == test, "better half by test": test <= np.median(test),
               "within 25% of the best test": test <= 1.25 * test.min()}
    print("Spearman's ρ against test perplexity")
    print("| fitness | " + " | ".join(f"{name} (n = {mask.sum()})" for name, mask in subsets.items())
          + " | seconds per evaluation |")
    print("|---" * (len(subsets) + 2) + "|")
    for name, values, key in (("perplexity", ppl, "seconds_nll"), ("KL", kl, "seconds_kl")):
        cells = " | ".join(spearman(values[mask], test[mask]) for mask in subsets.values())
        print(f"| {name} | {cells} | {np.mean([r[key] for r in rows]):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench-demo")
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--fitness-windows", type=int, default=8)
    parser.add_argument("--test-windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the per-candidate table as JSON lines here")
    parser.add_argument("--table", default=None, help="only print the table of an earlier --output file")
    args = parser.parse_args()
    if args.table:
        table([json.loads(line) for line in Path(args.table).read_text().splitlines()])
        return
    run = Path(args.run)
    saved = {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k in LEGACY_DEFAULTS}
    overrides = [f"fitness_windows={args.fitness_windows}", 'fitness="kl"', f"test_windows={args.test_windows}"]
    cfg = load_config(None, overrides, base={**LEGACY_DEFAULTS, **saved})
    t0 = time.perf_counter()
    evaluator = evaluator_for(problem(cfg.to_dict()), progress=True)
    print(f"problem loaded in {time.perf_counter() - t0:.0f} s; dense targets "
          f"{evaluator.dense_targets.numel() * 2 / 2**30:.2f} GiB", flush=True)
    rows = []
    out = open(args.output, "a") if args.output else None
    for i, expression in enumerate(candidates(run, args.candidates, args.seed)):
        fn = compile_tree(parse(expression))
        try:
            masks = evaluator.masks(fn)
        except Exception as err:  # an invalid score (constant in some layer): not a candidate to rank
            print(f"skip {expression}: {err}", flush=True)
            continue
        t = time.perf_counter()
        nll = evaluator.perplexity_with(masks, loss="nll")[0]
        t_nll = time.perf_counter() - t
        kl = evaluator.perplexity_with(masks, loss="kl")[0]
        t_kl = time.perf_counter() - t - t_nll
        test = test_window_nlls(evaluator, cfg, {expression: fn})[0][expression]
        row = {"expression": expression, "fitness_ppl": math.exp(nll.mean().item()), "mean_kl": kl.mean().item(),
               "test_ppl": math.exp(test.mean().item()), "seconds_nll": t_nll, "seconds_kl": t_kl}
        rows.append(row)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        print(f"{i + 1:3d} ppl {row['fitness_ppl']:10.2f}  kl {row['mean_kl']:.4f}  test {row['test_ppl']:10.2f}  "
              f"{expression}", flush=True)
    print(f"\nrun {run}: fitness on {args.fitness_windows} fitness windows of {cfg.fitness_seqlen} tokens; "
          f"test on {args.test_windows} WikiText-2 test windows of {cfg.test_seqlen}")
    table(rows)


if __name__ == "__main__":
    main()
