"""Did the proxy gate skip only candidates that could not have changed the search?

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/gate_audit.py runs/bench-fidelity/gate

Replays a finished run with ``proxy_gate = true`` to find the rival each gated child faced (the member it
had to beat), then evaluates every gated child against that rival with the run's own racing rule — what
the run would have done without the gate. A gated child that completes and beats its rival is a *false
skip*: the gate discarded a candidate that would have entered the population. Also checks the replay: it
must explain every raced child of the run (lost at its last window, not before). Rows go to
``RUN/gate_audit.json``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from evaluators.checkpoint import write_json_atomic
from metric_search.results.audit import audit_skipped, replay_agrees, replay_rivals
from metric_search.search import MetricSearch
from metric_search.store import RunError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--limit", type=int, help="audit only the first N gated children")
    args = parser.parse_args()
    try:
        search = MetricSearch.from_run(args.run_dir)
    except RunError as err:
        raise SystemExit(f"error: {err}") from None
    cfg = search.config
    if not cfg.proxy_gate:
        raise SystemExit(f"error: {args.run_dir} was not run with proxy_gate=true")
    agree, raced = replay_agrees(search, replay_rivals(search.evaluations_, cfg.population_size, search.race_rank()))
    begin = time.perf_counter()
    rows = audit_skipped(search, "gated", args.limit)
    seconds = time.perf_counter() - begin
    raced_rows = [row for row in rows if row["status"] == "raced"]
    complete = [row for row in rows if row["status"] == "ok"]
    false_skips = [row for row in complete if row["beats_rival"]]
    windows = [row["windows"] for row in raced_rows]
    summary = {
        "gated children audited": len(rows),
        "raced out by the run's own rule": len(raced_rows),
        "windows before raced out (median, max)": f"{statistics.median(windows):g}, {max(windows)}" if windows else "-",
        "completed, worse than their rival": len(complete) - len(false_skips),
        "completed and better than their rival (false skips)": len(false_skips),
        "invalid (non-finite perplexity)": sum(row["status"] == "invalid" for row in rows),
        "audit forward time (s)": round(seconds, 1),
        "replay explains the run's raced children": f"{agree} of {raced}",
    }
    print(f"\nGate audit of {args.run_dir} (racing: min {cfg.race_min_windows} windows, z = {cfg.race_z}, "
          f"rival = {cfg.race_against})\n\n| quantity | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    for row in false_skips:
        print(f"false skip at iteration {row['iteration']}: {row['expression']} "
              f"({row['perplexity']:.3f} < {row['rival_fitness']:.3f}; proxies {row['proxies']})")
    write_json_atomic(Path(args.run_dir) / "gate_audit.json", {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
