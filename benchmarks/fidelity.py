"""Multi-fidelity vs full evaluation: the demo search two or three ways, same seed, same wall-clock budget.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/fidelity.py [--minutes 20]
        [--config runs/smollm2-demo.toml] [key=value ...]
    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/fidelity.py --racing-run runs/bench-demo [--gate]

Run A evaluates every candidate on all fitness windows (``racing=false proxies=false``); run B races them
(``racing=true``) and records the proxies (``proxies=true``); with ``--gate``, run C also skips the forward
of a candidate whose reconstruction proxy exceeds that of every member it races against
(``proxy_gate=true``, with the default margin and row sample). All stop when the budget is spent
(``max_seconds``) and then measure the test perplexity of their best metrics, paired window by window
against A's. ``--racing-run`` takes an existing run with racing on (the demo config's own run, from
``benchmarks/search.py``) as run B, and gives the others the wall-clock time B's loop took;
``--skip-racing`` leaves B out (A and C only). A finished run already
in ``--out/{full,racing,gate}`` with the same config is read, not rerun (``--fresh`` reruns it).

A child that beats its rival must be evaluated in full under any of these rules, so the table also gives
each run's share of children evaluated in full and the candidates it would have evaluated if every
rejection (raced or gated child) had cost nothing: the most any cheaper rejection could reach at that
share. Also prints how well each proxy predicts perplexity (Spearman ρ over B's complete evaluations, and
over all its forwarded candidates; C's when B is left out), which decides whether the gate is worth turning
on.
"""
from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

from scipy.stats import spearmanr

from evaluators.checkpoint import write_json_atomic
from metric_search.config import GATE_KEYS, RACE_KEYS, load_config
from metric_search.final import paired_difference, test_window_nlls
from metric_search.search import MetricSearch
from metric_search.store import RunError
from metric_search.worker import evaluator_for, problem
from primitives import compile_tree, parse


def summarise(search) -> dict:
    cfg = search.config
    records = search.evaluations_
    counts = search.store.checkpoint()["counts"]
    forwarded = [r for r in records if not r["cached"] and r["status"] in ("ok", "raced", "halved")]
    best = search.hall_of_fame_[0] if search.hall_of_fame_ else {}
    initial = [r for r in records if r["iteration"] == 0]
    children = [r for r in records if r["iteration"] > 0 and not r["cached"]]
    complete = [r for r in children if r["status"] == "ok"]
    loop_seconds = float(search.logbook_[-1]["elapsed_s"])
    complete_seconds = sum(r["seconds"] for r in complete)
    # A child that beats its rival must be evaluated in full, so at this run's share of such children even
    # free rejections would give only this many candidates in the same time.
    ceiling = len(initial) + (loop_seconds - sum(r["seconds"] for r in initial)) * len(children) / max(
        1e-9, complete_seconds)
    return {
        "search loop wall time (min)": round(loop_seconds / 60, 1),
        "distinct candidates evaluated": len(records),
        "of which with a perplexity (complete or raced)": len(forwarded),
        "raced out": counts["raced"],
        "gated (no forward)": counts["gated"],
        "forward tokens per forwarded candidate": round(sum(r["fidelity"] for r in forwarded) * cfg.fitness_seqlen
                                                        / max(1, len(forwarded))),
        "children evaluated in full": f"{len(complete)} of {len(children)} ({len(complete) / max(1, len(children)):.0%})",
        "seconds per full evaluation (mean; the machine's speed)": round(complete_seconds / max(1, len(complete)), 2),
        "candidates if every rejection were free": round(ceiling),
        "best fitness (valid)": best.get("fitness", "-"),
        "best metric": f"`{best.get('expression', '-')}`",
        "its WikiText-2 test perplexity": best.get("test_perplexity", "-"),
    }


def proxy_correlations(search) -> dict:
    """Spearman ρ of each proxy with log perplexity over the complete evaluations, and over every forwarded
    candidate (raced ones at their partial perplexity): ranking good candidates vs separating bad ones."""
    out = {}
    for scope, statuses in (("complete", ("ok",)), ("forwarded", ("ok", "raced"))):
        records = [r for r in search.evaluations_ if r["status"] in statuses and not r["cached"] and r["proxies"]]
        for name in ("recon", "overlap"):
            pairs = [(r["proxies"][name], math.log(r["fitness"])) for r in records if name in r["proxies"]]
            if len(pairs) > 3:
                rho, p = spearmanr(*zip(*pairs))
                out[(name, scope)] = (rho, p, len(pairs))
    return out


def _reusable(search) -> dict:
    """Run B's config, less what identifies the run, limits its length or sets its fidelity."""
    drop = {"versions", "run_dir", "iterations", "max_seconds", "racing", "proxies", "proxy_gate", *GATE_KEYS}
    return {k: v for k, v in search.store.config().items() if k not in drop}


def _comparable(config) -> dict:
    """A run's settings, less those its arm does not use (no racing: no rival; no gate: no margin)."""
    settings = config.to_dict()
    unused = (() if settings["racing"] else RACE_KEYS) + (() if settings["proxy_gate"] else GATE_KEYS)
    return {k: v for k, v in settings.items() if k not in unused}


def paired_against_full(results: dict, labels: list[str]) -> dict:
    """Each run's best metric against run A's on the same test windows: is a test gap more than noise?"""
    best = {label: results[label].hall_of_fame_[0]["expression"] for label in labels if results[label].hall_of_fame_}
    if "full evaluation" not in best:
        return {}
    cfg = results["full evaluation"].config
    evaluator = evaluator_for(problem(cfg.to_dict()))
    fns = {expression: compile_tree(parse(expression)) for expression in set(best.values())}
    nll, spec = test_window_nlls(evaluator, cfg, fns)
    reference = nll[best["full evaluation"]]
    out = {}
    print(f"\nEach run's best metric against run A's, paired on the same {spec.n_windows} WikiText-2 test windows "
          f"(mean per-window NLL difference ± standard error; positive = worse than A's):\n")
    print("| run | test perplexity | NLL difference vs A |\n|---|---|---|")
    for label, expression in best.items():
        mean, se = paired_difference(nll[expression], reference)
        gap = "-" if label == "full evaluation" else f"{mean:+.4f} ± {se:.4f}"
        print(f"| {label} | {math.exp(nll[expression].mean().item()):.2f} | {gap} |")
        out[label] = {"test NLL difference vs full evaluation": round(mean, 5), "standard error": round(se, 5)}
    return out


ARMS = {"full evaluation": ("full", ["racing=false", "proxies=false"]),
        "racing + proxies": ("racing", ["racing=true", "proxies=true"]),
        "racing + proxy gate": ("gate", ["racing=true", "proxies=true", "proxy_gate=true"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="runs/smollm2-demo.toml")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--racing-run", help="an existing run with racing on, used as run B")
    parser.add_argument("--gate", action="store_true", help="add run C: racing with the recon proxy gate")
    parser.add_argument("--skip-racing", action="store_true", help="leave out run B (with --gate: A and C only)")
    parser.add_argument("--fresh", action="store_true", help="rerun arms whose finished run is already in --out")
    parser.add_argument("--out", default="runs/bench-fidelity")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    arms = {label: extra for label, extra in ARMS.items() if (args.gate or "gate" not in label)
            and not (args.skip_racing and label == "racing + proxies" and not args.racing_run)}
    if len(arms) < 2:
        raise SystemExit("error: --skip-racing leaves nothing to compare with full evaluation; add --gate")
    results = {}
    base = None
    if args.racing_run:
        try:
            search_b = MetricSearch.from_run(args.racing_run)
        except RunError as err:
            raise SystemExit(f"error: {err}") from None
        if not search_b.config.racing:
            raise SystemExit(f"{args.racing_run} was not run with racing=true")
        args.minutes = float(search_b.logbook_[-1]["elapsed_s"]) / 60
        results["racing + proxies"] = search_b
        base = _reusable(search_b)
    budget = [f"max_seconds={args.minutes * 60:.0f}", "iterations=100000"]
    for label, (folder, extra) in arms.items():
        if label in results:
            continue
        run_dir = Path(args.out) / folder
        overrides = budget + list(args.overrides) + extra
        config = load_config(None, overrides, base) if base else load_config(args.config, overrides)
        if (run_dir / "final.json").exists() and not args.fresh:
            earlier = MetricSearch.from_run(run_dir)
            if _comparable(earlier.config) == _comparable(config):  # finished with these settings: read it
                results[label] = earlier
                continue
        shutil.rmtree(run_dir, ignore_errors=True)
        results[label] = MetricSearch(config).fit(run_dir)
    summaries = {label: summarise(search) for label, search in results.items()}
    labels = [label for label in arms if label in summaries]
    proxied = results[labels[1]]  # B, or C when B is left out: both record the proxies
    cfg = proxied.config
    print(f"\nbudget {args.minutes:g} min per run; seed {cfg.seed}; "
          f"fitness {cfg.fitness_windows}×{cfg.fitness_seqlen} tokens of WikiText-2 valid; "
          f"racing: min {cfg.race_min_windows} windows, z = {cfg.race_z}")
    print("\n| quantity | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for key in summaries[labels[0]]:
        print(f"| {key} | " + " | ".join(str(summaries[label][key]) for label in labels) + " |")
    full = max(1, summaries["full evaluation"]["distinct candidates evaluated"])
    forwarded = max(1, summaries["full evaluation"]["of which with a perplexity (complete or raced)"])
    for label in labels[1:]:
        ratio = summaries[label]["distinct candidates evaluated"] / full
        with_ppl = summaries[label]["of which with a perplexity (complete or raced)"] / forwarded
        print(f"candidates per unit time, {label} vs full evaluation: {ratio:.2f}× (target ≥ 3×); "
              f"counting only those with a perplexity: {with_ppl:.2f}×")
    for label, paired in paired_against_full(results, labels).items():
        summaries[label].update(paired)
    print("\n| proxy | candidates | Spearman ρ with log perplexity | p | n |\n|---|---|---|---|---|")
    for (name, scope), (rho, p, n) in proxy_correlations(proxied).items():
        print(f"| {name} | {scope} | {rho:.3f} | {p:.2g} | {n} |")
    write_json_atomic(Path(args.out) / "summary.json", summaries)


if __name__ == "__main__":
    main()
