"""``analyze --reevaluate``: does one-shot search fitness predict quality under the final protocol?

The search ranks metrics by the perplexity of a one-shot pruned model on a few ``valid`` windows. This
module prunes the model again with the first hall-of-fame entries under another protocol — by default
Wanda's sequential (block-by-block) pruning, measured on the ``test`` split — and reports the rank
correlation between the search fitness and the new perplexity. Selection never sees these numbers.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

from scipy import stats as st

from evaluators import (Calibration, SymbolicPruner, calibration_windows, evaluation_windows, load_model,
                        parse_structure, perplexity, prunable_linears)
from evaluators.devices import dtype_name, model_dtype
from evaluators.allocation import allocate
from evaluators.masks import resolve_sparsity

from .markdown import p_text, table
from .metrics import MetricError, hall_of_fame, run_metric


def reevaluate(run_dir: str | Path, top: int = 5, sequential: bool = True, sparsity: float | None = None,
               structure: str | None = None, split: str = "test", windows: int = 16, seqlen: int = 512,
               device: str = "cpu", dtype=None, progress: bool = False) -> dict:
    """Re-prune the ``top`` hall-of-fame metrics of a run under another protocol and correlate.

    Args:
        run_dir: ``runs/<id>``; the model, data and calibration settings come from its ``config.json``.
        top: How many hall-of-fame entries (best first).
        sequential: Prune block by block (Wanda's protocol) instead of one-shot.
        sparsity: Another sparsity (default: the run's).
        structure: Another structure, e.g. ``"2:4"`` (default: the run's).
        split: Split of the perplexity windows (``test``: the reported protocol).
        windows: Number of windows (``0``: the whole split).
        seqlen: Tokens per window.
        device: Where to run the model (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
        dtype: The model's dtype (a ``torch.dtype`` or its name; ``None``: the device's default).
        progress: Show progress bars.

    Returns:
        ``{"protocol", "rows": [{rank, expression, fitness, perplexity}], "dense_perplexity",
        "spearman_rho", "spearman_p", "kendall_tau", "kendall_p", "seconds"}``.

    Raises:
        MetricError: A run without config or hall of fame.
    """
    rows = hall_of_fame(run_dir)[:top]
    if not rows:
        raise MetricError(f"{run_dir} has an empty hall of fame: nothing to re-evaluate")
    config = run_metric(run_dir, 1)["config"]
    if not config:
        raise MetricError(f"{run_dir} has no config.json: the model and data are unknown")
    t0 = time.perf_counter()
    parsed = parse_structure(structure or config.get("structure"))  # an N:M structure fixes the sparsity
    target, parsed = resolve_sparsity(sparsity or config.get("sparsity", 0.5) if parsed.unstructured else None, parsed)
    data_dir = config.get("data_dir") or None
    model, tokenizer = load_model(config["model"], device, dtype)
    # the dense weights wait on the host: a second copy on the GPU would double a 7B model's memory
    dense = {name: linear.weight.data.to("cpu", copy=True) for name, linear in prunable_linears(model).items()}
    cal, cal_spec = calibration_windows(tokenizer, config["data"], config["nsamples"], config["calib_seqlen"],
                                        config.get("seed", 0), data_dir)
    calibration = Calibration(cal, cal_spec.describe())
    allocation = allocate(model, calibration, target, parsed, config.get("allocation", "uniform"), progress=progress)
    evals, eval_spec = evaluation_windows(tokenizer, config["data"], split, seqlen, windows or None, data_dir)
    batch = config.get("batch_size", 4)
    dense_ppl = perplexity(model, evals, eval_spec.describe(), batch, progress).perplexity
    results = []
    for row in rows:
        for name, linear in prunable_linears(model).items():  # back to the dense weights before each metric
            linear.weight.data.copy_(dense[name])
        pruner = SymbolicPruner(row["expression"], grad_norm=config.get("grad_norm", "l2"))
        pruner.prune(model, calibration, allocation, parsed, sequential=sequential, progress=progress)
        ppl = perplexity(model, evals, eval_spec.describe(), batch, progress).perplexity
        results.append({"rank": row["rank"], "expression": row["expression"], "fitness": row["fitness"],
                        "perplexity": ppl})
    for name, linear in prunable_linears(model).items():
        linear.weight.data.copy_(dense[name])
    out = {"protocol": {"mode": "sequential" if sequential else "one-shot", "sparsity": target,
                        "structure": str(parsed), "perplexity": eval_spec.describe(),
                        "device": device, "dtype": dtype_name(model_dtype(model))},
           "rows": results, "dense_perplexity": dense_ppl, "spearman_rho": math.nan, "spearman_p": math.nan,
           "kendall_tau": math.nan, "kendall_p": math.nan}
    pairs = [(r["fitness"], r["perplexity"]) for r in results if r["fitness"] is not None]
    if len(pairs) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ties/constant input: NaN is reported as n/a
            rho, p_rho = st.spearmanr(*zip(*pairs))
            tau, p_tau = st.kendalltau(*zip(*pairs))
        out.update(spearman_rho=float(rho), spearman_p=float(p_rho), kendall_tau=float(tau), kendall_p=float(p_tau))
    out["seconds"] = time.perf_counter() - t0
    return out


def reevaluation_sentence(r: dict) -> str:
    """One sentence with the correlation between search fitness and re-evaluated perplexity."""
    rho = r["spearman_rho"]
    if rho != rho:
        return f"Too few metrics ({len(r['rows'])}) or tied values for a rank correlation with the re-evaluation."
    p = r["protocol"]
    return (f"Search fitness vs {p['mode']} re-evaluation on {p['perplexity'].get('split')} over the top "
            f"{len(r['rows'])} metrics: Spearman ρ = {rho:+.2f} ({p_text(r['spearman_p'])}), Kendall τ = "
            f"{r['kendall_tau']:+.2f} ({p_text(r['kendall_p'])}).")


def reevaluation_markdown(r: dict) -> str:
    """The report section for a :func:`reevaluate` result."""
    p = r["protocol"]
    q = p["perplexity"]
    verdict = reevaluation_sentence(r).rstrip(".")
    return (f"\n## Re-evaluation under another protocol\n\n"
            f"The first {len(r['rows'])} hall-of-fame metrics pruned again: {p['mode']}, sparsity {p['sparsity']:g} "
            f"({p['structure']}), perplexity on {q.get('n_windows')} × {q.get('seqlen')}-token windows of "
            f"`{q.get('source')}` {q.get('split')} (dense model: {r['dense_perplexity']:.4g}). {verdict}. A high "
            "ρ means the cheap one-shot fitness is a faithful proxy for the final quality.\n\n"
            + table([{**x, "expression": f"`{x['expression']}`"} for x in r["rows"]],
                    [("rank", "hall-of-fame rank"), ("fitness", "search fitness"), ("perplexity", "re-evaluated ppl"),
                     ("expression", "expression")]))
