"""End-of-run measurements: reported (WikiText-2 test) perplexity of the best hall-of-fame entries.

Selection never looks at these numbers (the chosen metric is the best *fitness*); they are reported
beside it, under the protocol saved in ``final.json``.
"""
from __future__ import annotations

import math

from evaluators import evaluation_windows
from evaluators.checkpoint import write_json_atomic
from primitives import compile_tree, parse

from .worker import evaluator_for


def test_window_nlls(evaluator, cfg, score_fns: dict) -> tuple[dict, object]:
    """Per-window NLL (a tensor) of the model pruned by each of ``score_fns`` on ``cfg``'s WikiText-2 test
    windows, and the windows' spec. The evaluator's fitness windows are restored afterwards."""
    windows, spec = evaluation_windows(evaluator.tokenizer, cfg.data, "test", cfg.test_seqlen, cfg.test_windows,
                                       cfg.data_dir or None)
    fitness_windows = evaluator.windows
    try:
        evaluator.windows = windows
        return {name: evaluator.perplexity_with(evaluator.masks(fn), loss="nll")[0]
                for name, fn in score_fns.items()}, spec
    finally:
        evaluator.windows = fitness_windows


def paired_difference(nll, reference) -> tuple[float, float]:
    """Mean per-window NLL difference ``nll − reference`` on the same windows, and its standard error."""
    diff = nll - reference
    return diff.mean().item(), diff.std().item() / math.sqrt(len(diff))


def test_perplexities(search, rows: list[dict]) -> dict[str, float]:
    """``{expression: test perplexity}`` for ``rows``; also written to ``final.json``."""
    cfg = search.config
    if not rows or cfg.test_top_k == 0 or cfg.test_windows == 0:
        return {}
    fns = {row["expression"]: compile_tree(parse(row["expression"], search.pset)) for row in rows}
    nlls, spec = test_window_nlls(evaluator_for(search.spec), cfg, fns)
    results = {name: round(math.exp(nll.mean().item()), 4) for name, nll in nlls.items()}
    write_json_atomic(search.store.path / "final.json", {"protocol": spec.describe(), "test_perplexity": results})
    return results
