"""Principles: short sentences generated from the numbers of ``analysis.summarize`` (nothing hand-written per
run), for the report and the command line."""
from __future__ import annotations

from .markdown import p_text

ALPHA = 0.05  # significance level of the generated sentences (on Holm-adjusted p-values)


def principles(s: dict) -> list[str]:
    """Short sentences generated from the numbers of :func:`summarize` (nothing hand-written per run)."""
    out = []
    n = s["n_records"]
    if n == 0:
        return ["The run has no evaluations yet."]
    bad = s["n_invalid"] + s["n_unparsed"]
    common = max(s["invalid_reasons"].items(), key=lambda kv: kv[1])[0] if s["invalid_reasons"] else None
    out.append(f"{bad} of {n} evaluated candidates ({100 * bad / n:.0f}%) were invalid or failed"
               + (f" (most often: {common})" if common else "") + "; they are excluded from every statistic.")
    if s["n_partial"]:
        out.append(f"{s['n_partial']} candidates were stopped early (racing or successive halving); their "
                   "partial-fidelity perplexity counts in the correlations and attribution, not in the rankings.")
    if s["n_skipped"]:
        out.append(f"{s['n_skipped']} candidates have no usable perplexity (proxy gate, or partial ones left out) "
                   "and are only counted.")
    if s["n_valid"] < 3:
        return out + [f"Only {s['n_valid']} valid candidate(s): too few for correlations."]
    if not s["top"]:
        return out + ["No candidate was evaluated on every fitness window: nothing to rank."]
    corr = {r["feature"]: r for r in s["correlations"]}
    for feat, word in (("size", "Larger trees"), ("height", "Deeper trees")):
        r = corr.get(feat)
        if r:
            verdict = ("had higher perplexity" if r["spearman_rho"] > 0 else "had lower perplexity") \
                if r["holm_p"] < ALPHA else "were neither clearly better nor worse"
            out.append(f"{word} {verdict} (Spearman ρ = {r['spearman_rho']:+.2f}, Holm-adjusted {p_text(r['holm_p'])}).")
    top = s["top"]
    best = top[0]["fitness"]
    near = min((c for c in s["pareto"] if c["fitness"] <= best * 1.01), key=lambda c: c["size"], default=None)
    if near:
        out.append(f"The smallest tree within 1% of the best perplexity ({best:.4g}) has size {near['size']}: "
                   f"{near['expression']} ({near['fitness']:.4g}).")
    for row in s["attribution"]:
        if row["feature"].startswith("leaf ") and row["ratio"] == row["ratio"]:
            leaf = row["feature"][5:]
            k = round(row["top_share"] * len(top))
            numbers = (f"geometric mean {row['geo_with']:.4g} with vs {row['geo_without']:.4g} without, "
                       f"Mann-Whitney Holm-adjusted {p_text(row['holm_p'])}")
            if row["holm_p"] < ALPHA:
                head = f"Metrics using {leaf} have {'lower' if row['ratio'] < 1 else 'higher'} perplexity ({numbers})"
            else:
                head = f"Using {leaf} makes no significant difference ({numbers})"
            out.append(f"{head}; {k} of the top {len(top)} use {leaf}, against {100 * row['share']:.0f}% of all "
                       "candidates.")
    ops = [r for r in s["attribution"] if r["feature"].startswith("op ") and r["holm_p"] < ALPHA
           and min(r["n_with"], r["n_without"]) >= 3]
    good = sorted((r for r in ops if r["ratio"] < 1), key=lambda r: r["ratio"])[:3]
    harm = sorted((r for r in ops if r["ratio"] > 1), key=lambda r: -r["ratio"])[:3]
    for rows, word in ((good, "lower"), (harm, "higher")):
        if rows:
            out.append(f"Operators that go with {word} perplexity: " + ", ".join(
                f"{r['feature'][3:]} (geometric-mean ratio ×{r['ratio']:.3g}, Holm {p_text(r['holm_p'])})"
                for r in rows) + ".")
    if not good and not harm:
        out.append("No operator shifts perplexity significantly on its own (Holm-adjusted Mann-Whitney p ≥ 0.05, "
                   "or fewer than 3 candidates with or without it).")
    gx = [g for g in s["gx"]["rows"] if g["n"]]
    if len(gx) >= 2:
        lead = min(gx, key=lambda g: g["median"])
        out.append(f"By use of X and G, '{lead['group']}' has the lowest median perplexity ({lead['median']:.4g}, "
                   f"n = {lead['n']}); Kruskal-Wallis across groups {p_text(s['gx']['kruskal_p'])}.")
    for b in s["baselines"]:
        gain = 100 * (1 - best / b["fitness"])
        out.append(f"The best metric's fitness {best:.4g} is {abs(gain):.1f}% {'below' if gain >= 0 else 'above'} "
                   f"{b['name']} ({b['fitness']:.4g}, rank {b['rank']} of {s['n_full']}).")
    prog = s["progress"]
    if prog["best_found_at"] is not None:
        still = prog["last_big_improvement"] is not None and prog["last_iteration"] and \
            prog["last_big_improvement"] >= 0.8 * prog["last_iteration"]
        out.append(f"The best was found at iteration {prog['best_found_at']} of {prog['last_iteration']}; "
                   + ("it was still improving by > 1% in the last fifth, so more iterations may help."
                      if still else "no > 1% improvement in the last fifth of the run."))
    return out
