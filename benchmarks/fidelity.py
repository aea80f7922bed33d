"""Multi-fidelity vs full evaluation: the demo search twice, same seed, same wall-clock budget.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/fidelity.py [--minutes 10]
        [--config runs/smollm2-demo.toml] [key=value ...]

Run A evaluates every candidate on all fitness windows; run B races them (``racing=true``) and records
the proxies (``proxies=true``). Both stop when the budget is spent (``max_seconds``) and then measure the
test perplexity of their best metric. Also prints how well each proxy predicts fitness (Spearman ρ over
B's complete evaluations), which decides whether the proxy gate is worth turning on.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from scipy.stats import spearmanr

from metric_search.config import load_config
from metric_search.search import MetricSearch


def summarise(search) -> dict:
    cfg = search.config
    records = search.evaluations_
    counts = search.store.checkpoint()["counts"]
    forwarded = [r for r in records if not r["cached"] and r["status"] in ("ok", "raced", "halved")]
    best = search.hall_of_fame_[0] if search.hall_of_fame_ else {}
    return {
        "distinct candidates evaluated": len(records),
        "forward passes (complete + raced)": len(forwarded),
        "raced out": counts["raced"],
        "forward tokens per forwarded candidate": round(sum(r["fidelity"] for r in forwarded) * cfg.fitness_seqlen
                                                        / max(1, len(forwarded))),
        "best fitness (valid)": best.get("fitness", "-"),
        "best metric": f"`{best.get('expression', '-')}`",
        "its WikiText-2 test perplexity": best.get("test_perplexity", "-"),
    }


def proxy_correlations(search) -> dict:
    ok = [r for r in search.evaluations_ if r["status"] == "ok" and r["proxies"]]
    out = {}
    for name in ("recon", "overlap"):
        pairs = [(r["proxies"][name], math.log(r["fitness"])) for r in ok if name in r["proxies"]]
        if len(pairs) > 3:
            rho, p = spearmanr(*zip(*pairs))
            out[name] = (rho, p, len(pairs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="runs/smollm2-demo.toml")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default="runs/bench-fidelity")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    budget = [f"max_seconds={args.minutes * 60}", "iterations=100000"]
    results = {}
    for label, extra in (("full evaluation", []), ("racing + proxies", ["racing=true", "proxies=true"])):
        run_dir = Path(args.out) / label.split()[0]
        shutil.rmtree(run_dir, ignore_errors=True)
        config = load_config(args.config, budget + list(args.overrides) + extra)
        search = MetricSearch(config).fit(run_dir)
        results[label] = (summarise(search), search)
    (a, _), (b, search_b) = results.values()
    cfg = search_b.config
    print(f"\nbudget {args.minutes:g} min per run; seed {cfg.seed}; fitness {cfg.fitness_windows}×{cfg.fitness_seqlen} "
          f"tokens of WikiText-2 valid; racing: min {cfg.race_min_windows} windows, z = {cfg.race_z}")
    print("\n| quantity | full evaluation | racing + proxies |\n|---|---|---|")
    for key in a:
        print(f"| {key} | {a[key]} | {b[key]} |")
    ratio = b["distinct candidates evaluated"] / max(1, a["distinct candidates evaluated"])
    print(f"\ncandidates per unit time, racing vs full: {ratio:.2f}× (target ≥ 3×)")
    print("\n| proxy | Spearman ρ with log fitness | p | n |\n|---|---|---|---|")
    for name, (rho, p, n) in proxy_correlations(search_b).items():
        print(f"| {name} | {rho:.3f} | {p:.2g} | {n} |")
    json.dump({k: v[0] for k, v in results.items()}, open(Path(args.out) / "summary.json", "w"), indent=2)


if __name__ == "__main__":
    main()
