"""Markdown, CSV and PNG output of :mod:`metric_search.analysis` (matplotlib with the Agg backend)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .markdown import GROUPS, gx_group, p_cell, table
from .reevaluate import reevaluation_markdown
from ..store import csv_text, write_text_atomic


def _code(rows: list[dict], key: str = "expression") -> list[dict]:
    return [{**r, key: f"`{r[key]}`"} for r in rows]


# --------------------------------------------------------------------------------------------- plots
def pyplot():
    """matplotlib's pyplot on the Agg backend, imported when a plot is first drawn (the ``plot`` extra)."""
    # optional dependency (the plot extra), imported when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (headless servers, tests)
    # optional dependency (the plot extra), imported when a plot is drawn
    import matplotlib.pyplot as plt
    return plt


def perplexity_axis(ax, values, label: str = "fitness perplexity") -> None:
    """Log scale when the values span more than a factor 10 (typical of a search), else linear (readable ticks)."""
    values = [v for v in values if v == v and v > 0]
    wide = bool(values) and max(values) / min(values) > 10
    ax.set_yscale("log" if wide else "linear")
    ax.set_ylabel(f"{label} (log scale)" if wide else label)


def reference_fitness(s: dict) -> tuple[str, float] | None:
    """The baseline fitness plots are drawn relative to: Wanda's when the run evaluated it, else the first
    known metric it evaluated, else none."""
    known = {b["name"]: b["fitness"] for b in s.get("baselines", [])}
    name = "wanda" if "wanda" in known else next(iter(known), None)
    return (name, known[name]) if name else None


def relative_view(s: dict, values: list[float]) -> dict | None:
    """How to draw ``values`` as percent vs the reference baseline, clipped to the informative range.

    The range runs from the best candidate to ``max(5 %, 4 × its gain)`` above the baseline: a search's
    decisions are made within a few percent of the baseline, while its failures reach 10¹⁰.
    """
    ref = reference_fitness(s)
    if ref is None or not values:
        return None
    pct = [100.0 * (v / ref[1] - 1.0) for v in values]
    low = min(pct)
    high = max(5.0, 4.0 * abs(min(low, 0.0)))
    pad = 0.05 * (high - low)
    return {"name": ref[0], "fitness": ref[1], "pct": pct, "low": low - pad, "high": high,
            "clipped": [min(p, high) for p in pct], "above": sum(p > high for p in pct)}


def draw_relative(ax, s: dict, view: dict, config: dict, what: str) -> None:
    """Percent-vs-baseline y axis, the known metrics as reference lines, and the run's problem in the title."""
    for b in s.get("baselines", []):
        pct = 100.0 * (b["fitness"] / view["fitness"] - 1.0)
        if view["low"] <= pct <= view["high"]:
            ax.axhline(pct, color="C2" if b["name"] == view["name"] else "C4", lw=0.9, ls="--")
            ax.annotate(b["name"], (1.0, pct), xycoords=("axes fraction", "data"), fontsize=7, ha="right",
                        va="bottom", color="C2" if b["name"] == view["name"] else "C4")
    ax.set_ylim(view["low"], view["high"] + 0.04 * (view["high"] - view["low"]))
    ax.set_ylabel(f"fitness vs {view['name']} (%; {view['fitness']:.4g} = 0)")
    problem = (f"{config.get('model', '?')}, {config.get('structure', '?')} at sparsity {config.get('sparsity', '?')}"
               + (f", {config['allocation']} allocation" if config.get("allocation", "uniform") != "uniform" else "")
               + (f", {config['fitness']} fitness" if config.get("fitness", "perplexity") != "perplexity" else ""))
    ax.set_title(f"{what} — {problem}", fontsize=9)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plot_fitness(s: dict, data: dict, path: Path) -> Path:
    """Fitness over iterations: relative to Wanda (or the first known metric) when the run evaluated one."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    v = data["valid"]
    full = [c for c in v if not c["partial"]]
    part = [c for c in v if c["partial"]]
    view = relative_view(s, [c["fitness"] for c in full or v])  # the range from complete evaluations
    y = (lambda f: min(max(100.0 * (f / view["fitness"] - 1.0), view["low"]), view["high"])) if view else (lambda f: f)
    ax.scatter([c["iteration"] for c in full], [y(c["fitness"]) for c in full], s=8, alpha=0.35, color="grey",
               label=f"complete evaluations ({len(full)})")
    if part:
        ax.scatter([c["iteration"] for c in part], [y(c["fitness"]) for c in part], s=8, alpha=0.35, color="grey",
                   marker="x", label=f"stopped early, partial estimate ({len(part)})")
    prog = s["progress"]
    if prog["iterations"]:
        ax.step(prog["iterations"], [y(b) for b in prog["best_so_far"]], where="post", color="C0", lw=2,
                label="best so far")
    med = [(i, y(m)) for i, m in zip(prog["logbook_iterations"], prog["population_median"]) if m == m]
    if med:
        ax.plot(*zip(*med), color="C1", lw=1.5, label="population median (logbook)")
    ax.set_xlabel("iteration")
    invalid = s["n_invalid"] + s["n_unparsed"]
    if view:
        outside = sum(not view["low"] <= 100.0 * (c["fitness"] / view["fitness"] - 1.0) <= view["high"] for c in v)
        if outside:
            ax.scatter([], [], s=8, color="grey", label=f"{outside} outside [{view['low']:.2g}, +{view['high']:.3g}] % "
                                                        f"drawn at the edge")
        draw_relative(ax, s, view, data.get("config") or {}, f"Fitness over iterations ({invalid} invalid not shown)")
    else:
        perplexity_axis(ax, [c["fitness"] for c in v])
        ax.set_title(f"Fitness over iterations ({invalid} invalid not shown)", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_pareto(s: dict, data: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    v = [c for c in data["valid"] if not c["partial"]]
    view = relative_view(s, [c["fitness"] for c in v])
    y = (lambda f: min(100.0 * (f / view["fitness"] - 1.0), view["high"])) if view else (lambda f: f)
    rng = np.random.default_rng(0)  # jitter so that equal sizes do not hide each other
    above = f"; {view['above']} above +{view['high']:.3g} % drawn at the top" if view and view["above"] else ""
    ax.scatter([c["size"] + rng.uniform(-0.15, 0.15) for c in v], [y(c["fitness"]) for c in v], s=8, alpha=0.35,
               color="grey", label=f"candidates ({len(v)}{above})")
    front = s["pareto"]
    if front:
        ax.step([c["size"] for c in front], [y(c["fitness"]) for c in front], where="post", color="C3", lw=1.5)
        ax.scatter([c["size"] for c in front], [y(c["fitness"]) for c in front], color="C3", s=25, zorder=3,
                   label="Pareto front")
    ax.set_xlabel("tree size (nodes)")
    if view:
        draw_relative(ax, s, view, data.get("config") or {}, "Tree size vs fitness")
    else:
        perplexity_axis(ax, [c["fitness"] for c in v])
        ax.set_title("Tree size vs perplexity", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_correlations(s: dict, path: Path) -> Path:
    plt = pyplot()
    rows = sorted(s["correlations"], key=lambda r: r["spearman_rho"])
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * max(1, len(rows))))
    colors = ["C2" if r["holm_p"] < 0.05 and r["spearman_rho"] < 0 else "C3" if r["holm_p"] < 0.05 else "lightgrey"
              for r in rows]
    ax.barh([r["feature"] for r in rows], [r["spearman_rho"] for r in rows], color=colors)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Spearman ρ with log-perplexity (< 0: goes with better metrics)")
    ax.set_title("Rank correlations (coloured: Holm-adjusted p < 0.05)", fontsize=10)
    return save_figure(fig, path)


def plot_attribution(s: dict, path: Path) -> Path:
    plt = pyplot()
    # optional dependency (the plot extra), imported when a plot is drawn
    from matplotlib.colors import to_rgba
    rows = sorted((r for r in s["attribution"] if r["ratio"] == r["ratio"]), key=lambda r: r["ratio"])
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * max(1, len(rows))))
    ax.barh([f"{r['feature']} (n={r['n_with']})" for r in rows], [math.log2(r["ratio"]) for r in rows],
            color=[to_rgba("C2" if r["ratio"] < 1 else "C3", 1.0 if r["holm_p"] < 0.05 else 0.35) for r in rows])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("log2(geometric-mean ppl with / without)   (< 0: lower perplexity with it)")
    ax.set_title("Leaf and operator attribution (faded: Holm-adjusted p ≥ 0.05)", fontsize=10)
    return save_figure(fig, path)


def plot_groups(s: dict, data: dict, path: Path) -> Path:

    plt = pyplot()
    groups = [(g, [c["fitness"] for c in data["valid"] if gx_group(c["leaves"]) == g]) for g in GROUPS]
    groups = [(g, v) for g, v in groups if v]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if groups:
        ax.boxplot([v for _, v in groups], showfliers=True)
        ax.set_xticks(range(1, len(groups) + 1), [f"{g}\n(n={len(v)})" for g, v in groups])
    perplexity_axis(ax, [x for _, v in groups for x in v])
    ax.set_title("Use of X vs G (besides W)", fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------- report
def _protocol(config: dict) -> str:
    if not config:
        return "unknown (no config.json)"
    return (f"model `{config.get('model')}`, sparsity {config.get('sparsity')} ({config.get('structure')}), one-shot; "
            f"fitness = perplexity on {config.get('fitness_windows')} × {config.get('fitness_seqlen')}-token windows "
            f"of "
            f"`{config.get('data')}` valid (fitness region); statistics from {config.get('nsamples')} × "
            f"{config.get('calib_seqlen')}-token calibration windows, G = {config.get('grad_norm', 'l2')}")


def write_run_report(s: dict, data: dict, out: Path, plots: bool = True) -> dict[str, str]:
    """Write ``report.md``, ``summary.json``, CSV tables and (optionally) PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    figures: dict[str, str] = {}
    if plots and s["n_valid"]:
        for name, fn in (("fitness", lambda p: plot_fitness(s, data, p)),
                         ("pareto", lambda p: plot_pareto(s, data, p)),
                         ("correlations", lambda p: plot_correlations(s, p)),
                         ("attribution", lambda p: plot_attribution(s, p)),
                         ("groups", lambda p: plot_groups(s, data, p))):
            if name in ("correlations", "attribution") and not s[name]:
                continue
            figures[name] = fn(out / f"{name}.png").name
    for name, rows in (("correlations", s["correlations"]), ("attribution", s["attribution"]),
                       ("pareto", s["pareto"]), ("top", s["top"])):
        if rows:
            cols = [k for k in rows[0] if k not in ("leaves", "ops")] + [k for k in ("leaves", "ops") if k in rows[0]]
            write_text_atomic(out / f"{name}.csv", csv_text([{**r, **{k: " ".join(r[k]) for k in ("leaves", "ops")
                                                                       if k in r}} for r in rows], cols))
            files[f"{name}.csv"] = str(out / f"{name}.csv")
    write_text_atomic(out / "summary.json", json.dumps(s, indent=2, default=str) + "\n")

    def fig(name: str, caption: str) -> str:
        return f"![{caption}]({figures[name]})\n\n" if name in figures else ""

    tests = s.get("tests") or {}
    top = [{**c, "rank": i + 1, "test": tests.get(c["expression"]), "leaves": " ".join(c["leaves"])}
           for i, c in enumerate(s["top"])]
    reasons = ", ".join(f"{k} ({v})" for k, v in sorted(s["invalid_reasons"].items(), key=lambda kv: -kv[1]))
    md = [f"# Analysis of run `{s['run_id']}`\n",
          f"Protocol: {_protocol(data['config'])}.\n",
          f"**{s['n_records']} evaluated candidates: {s['n_valid']} valid, {s['n_invalid']} invalid or failed"
          + (f" ({reasons})" if reasons else "")
          + (f", {s['n_unparsed']} no longer parseable" if s["n_unparsed"] else "")
          + (f", {s['n_skipped']} without usable perplexity (proxy gate)" if s["n_skipped"] else "")
          + f".** Invalid candidates are excluded from everything below. {s['n_mask_duplicates']} valid candidates "
            "share their mask with an earlier one (same pruned model, same fitness) and are kept as distinct trees."
          + (f" {s['n_partial']} valid candidates were stopped early by racing or successive halving: their "
             "perplexity is a partial-fidelity estimate, used in the correlations, attribution and X/G groups but "
             "not in the top metrics, Pareto front or best-so-far curve." if s["n_partial"] else "")
          + f" Statuses: {', '.join(f'{k} {v}' for k, v in sorted(s['statuses'].items()))}.\n",
          "## Principles\n", "Generated from the tables below (significance: Holm-adjusted p < 0.05):\n",
          "".join(f"- {p}\n" for p in s["principles"]),
          f"\n## Top metrics\n\nThe {len(top)} best valid candidates by fitness, one per distinct mask; "
          "`test ppl` is the "
          "test-split perplexity the search measured at its end (`final.json`, only the first `test_top_k` "
          "hall-of-fame entries); it was never used for selection.\n\n",
          table(_code(top), [("rank", "#"), ("fitness", "fitness ppl"), ("test", "test ppl"), ("size", "size"),
                             ("height", "height"), ("leaves", "leaves"), ("expression", "expression"),
                             ("canonical_key", "canonical key")]),
          "\n## Fitness over iterations\n\n", fig("fitness", "fitness over iterations"),
          "Grey: every valid evaluation; blue: best fitness found so far; orange: median fitness of the surviving "
          "population after each iteration (from `logbook.csv`). A flat blue line over the last part of the run means "
          "the search converged for this budget.\n",
          "\n## Pareto front: tree size vs perplexity\n\n", fig("pareto", "pareto front"),
          "A candidate is on the front when no smaller-or-equal tree has lower perplexity. Read it for the simplest "
          "metric worth using.\n\n",
          table(_code(s["pareto"]), [("size", "size"), ("fitness", "fitness ppl"), ("expression", "expression")]),
          "\n## Rank correlations with log-perplexity\n\n", fig("correlations", "rank correlations"),
          "Spearman ρ and Kendall τ-b between each feature and log-perplexity over the valid candidates (ranks, so "
          "identical on perplexity). Presence features are 0/1 (τ-b handles the ties). **Positive = the feature goes "
          "with worse (higher) perplexity.** `holm p` corrects Spearman's p for testing every feature. "
          "Correlation is not causation: GP keeps copying subtrees of good parents, so features of early good "
          "metrics are over-represented.\n\n",
          table(s["correlations"], [("feature", "feature"), ("mean", "mean / share"), ("spearman_rho", "Spearman ρ"),
                                    ("spearman_p", "p"), ("kendall_tau", "Kendall τ"), ("kendall_p", "p"),
                                    ("holm_p", "holm p")]),
          "\n## Operator and leaf attribution\n\n", fig("attribution", "attribution"),
          "Perplexity of candidates that contain a leaf or operator vs those that do not: geometric means "
          "(exp of mean log-perplexity), medians, their ratio (< 1: better with it), the two-sided Mann-Whitney U "
          "p-value (raw and Holm-adjusted over the rows), and the feature's share among the top metrics vs among all "
          "candidates.\n\n",
          table(s["attribution"], [("feature", "feature"), ("n_with", "n with"), ("n_without", "n without"),
                                   ("geo_with", "geo ppl with"), ("geo_without", "geo ppl without"),
                                   ("median_with", "median with"), ("median_without", "median without"),
                                   ("ratio", "ratio"), ("mw_p", "p"), ("holm_p", "holm p"), ("top_share", "top share"),
                                   ("share", "share")]),
          "\n## Use of X vs G\n\n", fig("groups", "use of X vs G"),
          table(s["gx"]["rows"], [("group", "leaves used (besides W)"), ("n", "n"), ("geo", "geo ppl"),
                                  ("median", "median ppl"), ("best", "best ppl")]),
          f"\nKruskal-Wallis across the groups with ≥ 2 candidates: {p_cell(s['gx']['kruskal_p'])}.\n"]
    if s["baselines"]:
        md += ["\n## Known metrics evaluated in this run\n\n",
               table(_code(s["baselines"]), [("name", "metric"), ("fitness", "fitness ppl"), ("rank", "rank"),
                                             ("expression", "expression")])]
    if s.get("reevaluation"):
        md.append(reevaluation_markdown(s["reevaluation"]))
    text = "\n".join(block.strip("\n") + "\n" for block in md if block.strip())  # one blank line between blocks
    write_text_atomic(out / "report.md", text)
    files.update({"report": str(out / "report.md"), "summary": str(out / "summary.json")})
    files.update({k: str(out / v) for k, v in figures.items()})
    return files
