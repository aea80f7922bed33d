"""``metric-search analyze``: what the shape of an evaluated metric says about its perplexity.

Reads ``runs/<id>/evaluations.jsonl`` (one record per evaluated candidate) and computes, over the *valid*
candidates (invalid and failed ones are counted, then excluded):

* fitness over iterations (best so far; the population median from ``logbook.csv``);
* the Pareto front of tree size vs perplexity;
* rank correlations (Spearman ρ, Kendall τ-b, p-values, Holm-adjusted) between log-perplexity and tree
  features: size, height, each leaf present, each operator present, and which of X / G is used;
* attribution: geometric-mean and median perplexity with vs without each leaf / operator (Mann-Whitney U);
* the top metrics, the known baselines if they were evaluated, and "principles": sentences generated from
  these numbers.

With multi-fidelity search, a candidate stopped early (status ``raced`` or ``halved``) carries a perplexity
estimated on fewer windows. Such candidates are bad by construction, so leaving them out would cut the
worse end off every correlation: by default they take part in the correlations, attribution and X/G groups
with their partial estimate (``partial=False`` leaves them out), never in the top metrics, the Pareto front,
the baseline ranks or the best-so-far curve, which use complete evaluations (``ok``) only. Candidates skipped
by the proxy gate (``gated``) have no perplexity and are only counted.

Perplexities span orders of magnitude, so everything uses log-perplexity or ranks: a Spearman or Kendall
coefficient is the same on perplexity and on its log; means are geometric (``exp(mean(log ppl))``).
Numbers are computed here; :mod:`metric_search.report` turns them into markdown and plots.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from deap import gp
from scipy import stats as st

from primitives import LEAVES, OPERATORS, ExpressionError, leaves_used, parse, rank_key

from ..store import CONFIG, EVALUATIONS, LOGBOOK, RunStore
from ..toolbox import KNOWN_METRICS
from .markdown import GROUPS, gx_group
from .metrics import MetricError, hall_of_fame
from .principles import principles
from .reevaluate import reevaluation_sentence
from .report import write_run_report

PARTIAL = ("raced", "halved")  # stopped early, with a perplexity estimated on fewer windows


def load_candidates(run_dir: str | Path, partial: bool = True) -> dict:
    """Every record of a run, split into valid (with features) and excluded.

    Args:
        run_dir: ``runs/<id>``.
        partial: Count ``raced``/``halved`` candidates (partial-fidelity perplexity) as valid.

    Returns:
        ``{"run_dir", "run_id", "config", "records", "valid", "invalid", "skipped", "unparsed", "logbook",
        "tests"}``; each valid candidate is a dict with ``expression, fitness, log_ppl, size, height,
        iteration, leaves, ops, rank_key, canonical_key, mask_hash, cached, partial, fidelity``. ``skipped``
        holds gated candidates (and partial ones when ``partial=False``).

    Raises:
        MetricError: If ``run_dir`` has no ``evaluations.jsonl``.
    """
    path = Path(run_dir)
    if not (path / EVALUATIONS).is_file():
        raise MetricError(f"{path} has no {EVALUATIONS} to analyse" if path.is_dir() else f"no run directory {path}")
    store = RunStore(path)
    records = store.evaluations()
    config = json.loads((path / CONFIG).read_text()) if (path / CONFIG).is_file() else {}
    valid, invalid, skipped, unparsed = [], [], [], []
    for order, r in enumerate(records):
        fitness, status = r.get("fitness"), r.get("status")
        usable = isinstance(fitness, (int, float)) and 0 < fitness < math.inf
        if status == "gated" or (status in PARTIAL and not (partial and usable)):
            skipped.append(r)
            continue
        if status not in ("ok",) + PARTIAL or not usable:
            invalid.append(r)
            continue
        try:
            tree = parse(r["expression"])
        except (ExpressionError, KeyError, TypeError):  # e.g. an operator no longer registered
            unparsed.append(r)
            continue
        valid.append({
            "expression": r["expression"], "fitness": float(fitness), "log_ppl": math.log(fitness),
            "size": int(r.get("size") or len(tree)), "height": int(r.get("height") or tree.height),
            "iteration": int(r.get("iteration") or 0), "order": order,
            "leaves": set(leaves_used(tree)), "ops": {n.name for n in tree if isinstance(n, gp.Primitive)},
            "rank_key": r.get("rank_key", ""), "canonical_key": r.get("canonical_key", ""),
            "mask_hash": r.get("mask_hash"), "cached": bool(r.get("cached")), "partial": status != "ok",
            "fidelity": r.get("fidelity", len(r.get("window_nll") or [])),
        })
    tests = {}
    try:
        tests = {row["expression"]: row["test_perplexity"] for row in hall_of_fame(path)
                 if row.get("test_perplexity") is not None}
    except MetricError:
        pass
    return {"run_dir": str(path), "run_id": path.resolve().name, "config": config, "records": records,
            "valid": valid, "invalid": invalid, "skipped": skipped, "unparsed": unparsed,
            "logbook": store.read_table(LOGBOOK),
            "tests": tests}


def feature_columns(valid: list[dict]) -> dict[str, np.ndarray]:
    """Feature name → values over ``valid``: size, height, ``leaf W`` …, ``op mul`` …, X/G use groups."""
    cols = {"size": np.array([c["size"] for c in valid], float),
            "height": np.array([c["height"] for c in valid], float)}
    for leaf in LEAVES:
        cols[f"leaf {leaf}"] = np.array([leaf in c["leaves"] for c in valid], float)
    seen = set().union(*(c["ops"] for c in valid)) if valid else set()
    for op in [o for o in OPERATORS if o in seen] + sorted(seen - set(OPERATORS)):
        cols[f"op {op}"] = np.array([op in c["ops"] for c in valid], float)
    for group in GROUPS[1:]:
        cols[f"uses {group}"] = np.array([gx_group(c["leaves"]) == group for c in valid], float)
    return cols


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    idx = [i for i, p in enumerate(pvalues) if p == p]
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        out[i] = running
    return out


def correlations(valid: list[dict]) -> list[dict]:
    """Spearman and Kendall (τ-b, tie-aware) between each feature and log-perplexity.

    A positive coefficient means the feature goes with *higher* (worse) perplexity. Features that are
    constant over the valid candidates are left out; ``holm_p`` adjusts Spearman's p over the features kept.
    """
    if len(valid) < 3:
        return []
    y = np.array([c["log_ppl"] for c in valid])
    rows = []
    for name, x in feature_columns(valid).items():
        if np.unique(x).size < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant-input warnings: y may be constant in tiny runs
            rho, p_rho = st.spearmanr(x, y)
            tau, p_tau = st.kendalltau(x, y)
        rows.append({"feature": name, "kind": "count" if name in ("size", "height") else "presence",
                     "n": len(x), "mean": float(x.mean()), "spearman_rho": float(rho), "spearman_p": float(p_rho),
                     "kendall_tau": float(tau), "kendall_p": float(p_tau)})
    for row, adj in zip(rows, holm([r["spearman_p"] for r in rows])):
        row["holm_p"] = adj
    return rows


def _geo(values) -> float:
    return float(math.exp(np.mean(values))) if len(values) else math.nan


def attribution(valid: list[dict], top: int = 10) -> list[dict]:
    """Per leaf / operator / X-G group: perplexity of candidates with vs without it.

    Columns: ``n_with, n_without, geo_with, geo_without`` (geometric means), ``median_with, median_without``,
    ``ratio`` (geo_with / geo_without; < 1 means the feature goes with lower perplexity), ``mw_p``
    (two-sided Mann-Whitney U on log-perplexity), ``holm_p`` (``mw_p`` Holm-adjusted over the rows),
    ``top_share`` (share among the ``top`` best) vs ``share``.
    """
    if not valid:
        return []
    y = np.array([c["log_ppl"] for c in valid])
    # the top set is ranked among complete evaluations, as the hall of fame is
    best = set([i for i in np.argsort(y, kind="stable").tolist() if not valid[i].get("partial")][:top])
    rows = []
    for name, x in feature_columns(valid).items():
        if name in ("size", "height"):
            continue
        has = x.astype(bool)
        with_, without = y[has], y[~has]
        p = math.nan
        if len(with_) and len(without):
            p = float(st.mannwhitneyu(with_, without, alternative="two-sided").pvalue)
        rows.append({"feature": name, "n_with": int(has.sum()), "n_without": int((~has).sum()),
                     "geo_with": _geo(with_), "geo_without": _geo(without),
                     "median_with": float(np.exp(np.median(with_))) if len(with_) else math.nan,
                     "median_without": float(np.exp(np.median(without))) if len(without) else math.nan,
                     "ratio": _geo(with_) / _geo(without) if len(with_) and len(without) else math.nan,
                     "mw_p": p, "share": float(has.mean()),
                     "top_share": float(np.mean([has[i] for i in best])) if best else math.nan})
    for row, adj in zip(rows, holm([r["mw_p"] for r in rows])):
        row["holm_p"] = adj
    return rows


def pareto_front(valid: list[dict]) -> list[dict]:
    """Candidates no other candidate beats on both size and perplexity (smallest size first)."""
    front, best = [], math.inf
    for c in sorted(valid, key=lambda c: (c["size"], c["fitness"], c["order"])):
        if c["fitness"] < best:
            front.append(c)
            best = c["fitness"]
    return front


def top_metrics(valid: list[dict], k: int = 10) -> list[dict]:
    """The ``k`` best valid candidates, one per distinct mask (as the hall of fame)."""
    seen, out = set(), []
    for c in sorted(valid, key=lambda c: (c["fitness"], c["order"])):
        key = c["mask_hash"] or c["rank_key"]
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
        if len(out) == k:
            break
    return out


def gx_groups(valid: list[dict]) -> dict:
    """Perplexity by use of X and G (W only, X only, G only, both) and a Kruskal-Wallis test across groups."""
    groups = {g: [c["log_ppl"] for c in valid if gx_group(c["leaves"]) == g] for g in GROUPS}
    rows = [{"group": g, "n": len(v), "geo": _geo(v), "median": float(np.exp(np.median(v))) if v else math.nan,
             "best": float(np.exp(min(v))) if v else math.nan} for g, v in groups.items()]
    filled = [v for v in groups.values() if len(v) >= 2]
    p = math.nan
    if len(filled) >= 2 and len({x for v in filled for x in v}) > 1:
        p = float(st.kruskal(*filled).pvalue)
    return {"rows": rows, "kruskal_p": p}


def baselines(valid: list[dict]) -> list[dict]:
    """Known metrics (wanda, magnitude, …) found among the candidates by rank key, with their rank."""
    ranked = sorted(valid, key=lambda c: c["fitness"])
    out = []
    for name, expression in KNOWN_METRICS.items():
        key = rank_key(expression)
        hit = next((i for i, c in enumerate(ranked) if c["rank_key"] == key), None)
        if hit is not None:
            out.append({"name": name, "fitness": ranked[hit]["fitness"], "rank": hit + 1,
                        "expression": ranked[hit]["expression"]})
    return out


def progress(data: dict) -> dict:
    """Per iteration: the best fitness so far (evaluations) and the population median (logbook)."""
    by_iter: dict[int, list[float]] = {}
    for c in (c for c in data["valid"] if not c["partial"]):  # complete evaluations only
        by_iter.setdefault(c["iteration"], []).append(c["fitness"])
    iters = sorted(by_iter)
    best, running = [], math.inf
    for i in iters:
        running = min(running, min(by_iter[i]))
        best.append(running)
    log_iters, medians, log_best = [], [], []
    for row in data["logbook"]:
        try:
            log_iters.append(int(row["iteration"]))
            medians.append(float(row["median_fitness"]) if row.get("median_fitness") else math.nan)
            log_best.append(float(row["best_fitness"]) if row.get("best_fitness") else math.nan)
        except (KeyError, ValueError):
            continue
    found = next((i for i, b in zip(iters, best) if b == best[-1]), None) if best else None
    # the last iteration that improved the best by more than 1% tells whether the run was still moving
    last_big = None
    for i in range(1, len(best)):
        if best[i] < best[i - 1] * 0.99:
            last_big = iters[i]
    return {"iterations": iters, "best_so_far": best, "logbook_iterations": log_iters,
            "population_median": medians, "population_best": log_best, "best_found_at": found,
            "last_big_improvement": last_big, "last_iteration": max(iters) if iters else None}


def summarize(data: dict, top: int = 10) -> dict:
    """Every table of the report, as plain data (also saved as ``summary.json``)."""
    valid = data["valid"]
    full = [c for c in valid if not c["partial"]]  # the ranking tables use complete evaluations only
    statuses: dict[str, int] = {}
    for r in data["records"]:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    reasons: dict[str, int] = {}
    for r in data["invalid"]:
        reason = (r.get("reason") or r.get("status") or "?").split(" in model.")[0].split(":")[0][:60]
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "run_id": data["run_id"], "n_records": len(data["records"]), "n_valid": len(valid), "n_full": len(full),
        "n_partial": len(valid) - len(full), "n_skipped": len(data["skipped"]), "statuses": statuses,
        "n_invalid": len(data["invalid"]), "n_unparsed": len(data["unparsed"]),
        "n_mask_duplicates": sum(c["cached"] for c in valid), "invalid_reasons": reasons,
        "correlations": correlations(valid), "attribution": attribution(valid, top),
        "pareto": [_public(c) for c in pareto_front(full)], "top": [_public(c) for c in top_metrics(full, top)],
        "gx": gx_groups(valid), "baselines": baselines(full), "progress": progress(data),
        "tests": data["tests"],
    }


def _public(c: dict) -> dict:
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in c.items()}


def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None, top: int = 10, plots: bool = True,
                reevaluation: dict | None = None, partial: bool = True) -> dict:
    """Analyse one run: writes ``report.md``, CSV tables, ``summary.json`` and PNG plots.

    Args:
        run_dir: ``runs/<id>``.
        out_dir: Output folder (default ``runs/<id>/analysis``).
        top: How many top metrics to list (and to measure enrichment on).
        plots: Write the PNG plots (needs matplotlib, the ``plot`` extra).
        reevaluation: Result of :func:`metric_search.reevaluate.reevaluate`, reported in its own section.
        partial: Let early-stopped (``raced``/``halved``) candidates into the correlations and attribution.

    Returns:
        The summary dict, with ``"principles"``, ``"files"`` (written paths) and ``"out_dir"``.

    Raises:
        MetricError: No ``evaluations.jsonl``.
    """
    data = load_candidates(run_dir, partial)
    summary = summarize(data, top)
    summary["principles"] = principles(summary)
    if reevaluation:
        summary["reevaluation"] = reevaluation
        summary["principles"].append(reevaluation_sentence(reevaluation))
    out = Path(out_dir) if out_dir else Path(run_dir) / "analysis"
    summary["files"] = write_run_report(summary, data, out, plots)
    summary["out_dir"] = str(out)
    return summary
