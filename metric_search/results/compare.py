"""``metric-search analyze runs/a runs/b --compare``: does the ranking of metrics transfer between runs?

Two runs (another model, sparsity, seed, data …) evaluate overlapping sets of candidates. Candidates are
matched by **rank key** (two trees with the same key prune identically), and for every pair of runs we
report the rank correlation of their fitness over the shared valid candidates (Spearman, Kendall τ-b, with
p-values), how many of one run's top metrics the other evaluated and where they landed there, and which
problem settings differ between the runs.
"""
from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import stats as st

from ..config import COMPARED_KEYS
from ..store import write_text_atomic
from .analysis import load_candidates
from .markdown import p_text, table
from .metrics import MetricError
from .report import perplexity_axis, pyplot, save_figure


def _best_by_key(data: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for c in data["valid"]:
        if c["rank_key"] and (c["rank_key"] not in out or c["fitness"] < out[c["rank_key"]]["fitness"]):
            out[c["rank_key"]] = c
    return out


def _strength(rho: float) -> str:
    a = abs(rho)
    return "strongly" if a >= 0.7 else "moderately" if a >= 0.4 else "weakly" if a >= 0.2 else "hardly"


def compare_pair(a: dict, b: dict, top: int = 10) -> dict:
    """Ranking transfer from run ``a`` to run ``b`` (both from :func:`metric_search.analysis.load_candidates`)."""
    fa, fb = _best_by_key(a), _best_by_key(b)
    shared = sorted(set(fa) & set(fb), key=lambda k: fa[k]["fitness"])
    invalid_b = {r.get("rank_key") for r in b["invalid"]}
    invalid_a = {r.get("rank_key") for r in a["invalid"]}
    out = {"a": a["run_id"], "b": b["run_id"], "n_a": len(fa), "n_b": len(fb), "n_shared": len(shared),
           "n_b_full": sum(not c["partial"] for c in fb.values()),
           "valid_a_invalid_b": len(set(fa) & invalid_b), "valid_b_invalid_a": len(set(fb) & invalid_a),
           "spearman_rho": math.nan, "spearman_p": math.nan, "kendall_tau": math.nan, "kendall_p": math.nan,
           "shared": [{"rank_key": k, "expression": fa[k]["expression"], "fitness_a": fa[k]["fitness"],
                       "fitness_b": fb[k]["fitness"]} for k in shared]}
    if len(shared) >= 3:
        x = np.log([fa[k]["fitness"] for k in shared])
        y = np.log([fb[k]["fitness"] for k in shared])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input gives NaN, reported as n/a
            rho, p_rho = st.spearmanr(x, y)
            tau, p_tau = st.kendalltau(x, y)
        out.update(spearman_rho=float(rho), spearman_p=float(p_rho), kendall_tau=float(tau), kendall_p=float(p_tau))
    # rankings use complete evaluations only (a partial estimate is not a rank); correlations use all
    full_a = sorted((k for k in fa if not fa[k]["partial"]), key=lambda k: fa[k]["fitness"])
    full_b = sorted((k for k in fb if not fb[k]["partial"]), key=lambda k: fb[k]["fitness"])
    rank_b = {k: i + 1 for i, k in enumerate(full_b)}
    top_a, top_b = full_a[:top], set(full_b[:top])
    found = [{"rank_a": i + 1, "expression": fa[k]["expression"], "rank_b": rank_b.get(k),
              "percentile_b": round(100 * rank_b[k] / len(full_b), 1) if k in rank_b else math.nan}
             for i, k in enumerate(top_a)]
    out.update(top=found, top_overlap=len(set(top_a) & top_b), top_k=len(top_a),
               top_found_in_b=sum(f["rank_b"] is not None for f in found))
    return out


def _sentences(pair: dict, diffs: dict) -> list[str]:
    a, b = pair["a"], pair["b"]
    out = []
    if pair["n_shared"] < 3:
        out.append(f"{a} and {b} share only {pair['n_shared']} valid candidates (by rank key): too few to correlate.")
    else:
        rho = pair["spearman_rho"]
        if rho == rho:
            direction = "" if rho >= 0 else " (inverted)"
            out.append(f"Over the {pair['n_shared']} candidates valid in both, the ranking transfers {_strength(rho)}"
                       f"{direction} from {a} to {b}: Spearman ρ = {rho:+.2f} ({p_text(pair['spearman_p'])}), "
                       f"Kendall τ = {pair['kendall_tau']:+.2f} ({p_text(pair['kendall_p'])}).")
    found = [f for f in pair["top"] if f["rank_b"] is not None]
    if found:
        med = float(np.median([f["percentile_b"] for f in found]))
        out.append(f"{len(found)} of the top {pair['top_k']} of {a} were evaluated in {b}; their median position "
                   f"there is the best {med:.0f}% ({pair['top_overlap']} of them are also in the top {pair['top_k']} "
                   f"of {b}).")
    best = pair["top"][0] if pair["top"] else None
    if best and best["rank_b"] is not None:
        out.append(f"The best metric of {a} ({best['expression']}) ranks {best['rank_b']} of {pair['n_b_full']} "
                   f"in {b}.")
    if pair["valid_a_invalid_b"]:
        out.append(f"{pair['valid_a_invalid_b']} candidates valid in {a} were invalid in {b}.")
    if diffs:
        out.append("The runs differ in: " + ", ".join(f"{k} ({' vs '.join(map(str, v))})" for k, v in diffs.items())
                   + ".")
    return out


def _plot_pair(pair: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    xs = [s["fitness_a"] for s in pair["shared"]]
    ys = [s["fitness_b"] for s in pair["shared"]]
    ax.scatter(xs, ys, s=12, alpha=0.6)
    wide = bool(xs) and (max(xs) / min(xs) > 10)
    ax.set_xscale("log" if wide else "linear")
    perplexity_axis(ax, ys, f"fitness ppl in {pair['b']}")
    ax.set_xlabel(f"fitness ppl in {pair['a']}" + (" (log scale)" if wide else ""))
    rho = pair["spearman_rho"]
    ax.set_title(f"{pair['n_shared']} shared candidates, Spearman ρ = " + (f"{rho:+.2f}" if rho == rho else "n/a"),
                 fontsize=10)
    return save_figure(fig, path)


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None, top: int = 10,
                 plots: bool = True, partial: bool = True) -> dict:
    """Compare every pair of runs; write ``compare.md``, ``compare.json`` and one scatter plot per pair.

    Args:
        run_dirs: Two or more run directories.
        out_dir: Output folder (default ``<first run>/analysis/compare``).
        top: Size of the "top metrics" sets compared.
        plots: Write PNG scatter plots (needs matplotlib).
        partial: Also match candidates stopped early (``raced``/``halved``) with their partial estimates.

    Returns:
        ``{"runs", "pairs", "sentences", "files", "out_dir"}``.

    Raises:
        MetricError: Fewer than two runs, or a run without evaluations.
    """
    if len(run_dirs) < 2:
        raise MetricError("--compare needs at least two run directories")
    datas = [load_candidates(d, partial) for d in run_dirs]
    out = Path(out_dir) if out_dir else Path(run_dirs[0]) / "analysis" / "compare"
    out.mkdir(parents=True, exist_ok=True)
    pairs, sentences, figures = [], [], []
    for (i, a), (j, b) in itertools.combinations(enumerate(datas), 2):
        for x, y in ((a, b), (b, a)):  # transfer is not symmetric for the top-k part
            pair = compare_pair(x, y, top)
            diffs = {k: (x["config"].get(k), y["config"].get(k)) for k in COMPARED_KEYS
                     if x["config"].get(k) != y["config"].get(k)}
            pair["differences"] = diffs
            pairs.append(pair)
            sentences += _sentences(pair, diffs if x is a else {})
        if plots and pairs[-2]["n_shared"]:
            figures.append(_plot_pair(pairs[-2], out / f"compare_{i + 1}_{j + 1}.png").name)
    md = ["# Comparison of runs\n",
          "".join(f"{k + 1}. `{d['run_id']}` ({d['run_dir']}): {len(d['valid'])} valid of {len(d['records'])} "
                  f"evaluated ({len(d['invalid']) + len(d['unparsed'])} invalid or failed, excluded)\n"
                  for k, d in enumerate(datas)),
          "Candidates are matched by rank key; correlations use log-perplexity over the candidates valid in both "
          "runs.\n",
          "## Findings\n", "".join(f"- {s}\n" for s in sentences),
          "## Rank correlation of shared candidates\n",
          table(pairs[::2],  # correlations are symmetric: one row per pair of runs
                [("a", "run a"), ("b", "run b"), ("n_shared", "shared"), ("spearman_rho", "Spearman ρ"),
                 ("spearman_p", "p"), ("kendall_tau", "Kendall τ"), ("kendall_p", "p")])]
    md += [f"![shared candidates]({f})\n" for f in figures]
    for p in pairs:
        md += [f"## Top {p['top_k']} of `{p['a']}` in `{p['b']}`\n",
               table([{**f, "expression": f"`{f['expression']}`"} for f in p["top"]],
                     [("rank_a", f"rank in {p['a']}"), ("rank_b", f"rank in {p['b']}"), ("percentile_b", "percentile"),
                      ("expression", "expression")])]
    write_text_atomic(out / "compare.md", "\n".join(block.strip("\n") + "\n" for block in md if block.strip()))
    result = {"runs": [d["run_dir"] for d in datas], "pairs": pairs, "sentences": sentences}
    write_text_atomic(out / "compare.json", json.dumps(result, indent=2, default=str) + "\n")
    result["files"] = [str(out / "compare.md"), str(out / "compare.json")] + [str(out / f) for f in figures]
    result["out_dir"] = str(out)
    return result
