"""How far the proxy gate's sampled ``recon`` estimate is from the exact value, and what it saves.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/gate_estimate.py RUN_DIR [RUN_DIR ...]
        [--rows 8 16] [--limit N]

For every recorded candidate with an exact ``recon`` proxy (all runs must share one fitness problem), scores
the candidate's expression again, estimates ``recon`` from one output row in ``--rows`` and prints the
ratio estimate/exact (the gate skips the full masks when the estimate exceeds ``SAMPLED_GATE_FACTOR`` × the
gate, so a ratio above that factor could skip a candidate the exact gate would forward) and the time of the
estimate against that of the exact proxy (full masks, mask hash and ``recon``), measured in this run.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from evaluators.fitness import SAMPLED_GATE_FACTOR
from metric_search.search import MetricSearch
from metric_search.store import RunError
from metric_search.worker import evaluator_for, problem
from primitives import compile_tree, parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16], help="estimate on 1 row in this many")
    parser.add_argument("--limit", type=int, help="at most N candidates per run")
    args = parser.parse_args()
    try:
        searches = [MetricSearch.from_run(run_dir) for run_dir in args.run_dirs]
    except RunError as err:
        raise SystemExit(f"error: {err}") from None
    spec = problem(searches[0].config.to_dict())
    if any(problem(search.config.to_dict()) != spec for search in searches):
        raise SystemExit("error: the runs do not share one fitness problem (model, data, sparsity, ...)")
    records, seen = [], set()
    for search in searches:
        mine = [r for r in search.evaluations_ if r["proxies"].get("recon") is not None and not r["cached"]]
        for record in mine[:args.limit] if args.limit else mine:
            if record["rank_key"] not in seen:
                seen.add(record["rank_key"])
                records.append(record)
    if not records:
        raise SystemExit("error: no recorded candidate has an exact recon proxy (run with proxies=true)")
    evaluator = evaluator_for(spec, progress=True)
    ratios = {rows: [] for rows in args.rows}
    seconds = {rows: 0.0 for rows in args.rows}
    exact_seconds = 0.0
    for record in tqdm(records, desc="candidates"):
        fn = compile_tree(parse(record["expression"]))
        begin = time.perf_counter()
        scores = {name: evaluator.layer_scores(fn, name) for name in evaluator.linears}
        scored = time.perf_counter() - begin
        for rows in args.rows:
            begin = time.perf_counter()
            ratios[rows].append(evaluator.recon_estimate(scores.__getitem__, rows) / record["proxies"]["recon"])
            seconds[rows] += scored + time.perf_counter() - begin
        begin = time.perf_counter()
        masks = evaluator.masks(fn, scores)
        evaluator.mask_hash(masks)
        evaluator.proxy_values(masks)
        exact_seconds += scored + time.perf_counter() - begin
    print(f"\n{len(records)} candidates from {', '.join(args.run_dirs)}; skip factor {SAMPLED_GATE_FACTOR:g}\n")
    print("| rows sampled | estimate/exact: max | 99th pct | median | min | above the factor | "
          "time vs exact proxy |\n|---|---|---|---|---|---|---|")
    for rows in args.rows:
        r = np.asarray(ratios[rows])
        print(f"| 1 in {rows} | {r.max():.3f} | {np.quantile(r, 0.99):.3f} | {np.median(r):.3f} | {r.min():.3f} | "
              f"{int((r > SAMPLED_GATE_FACTOR).sum())} | {seconds[rows] / exact_seconds:.2f}× |")


if __name__ == "__main__":
    main()
