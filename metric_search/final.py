"""End-of-run measurements: reported (WikiText-2 test) perplexity of the best hall-of-fame entries.

Selection never looks at these numbers (the chosen metric is the best *fitness*); they are reported
beside it, under the protocol saved in ``final.json``.
"""
from __future__ import annotations

import math

from evaluators import evaluation_windows
from evaluators.checkpoint import write_json_atomic
from primitives import compile_tree, parse


def test_perplexities(search, rows: list[dict]) -> dict[str, float]:
    """``{expression: test perplexity}`` for ``rows``; also written to ``final.json``."""
    cfg = search.config
    if not rows or cfg.test_top_k == 0 or cfg.test_windows == 0:
        return {}
    from .worker import evaluator_for

    evaluator = evaluator_for(search.spec)
    windows, spec = evaluation_windows(evaluator.tokenizer, cfg.data, "test", cfg.test_seqlen, cfg.test_windows,
                                       cfg.data_dir or None)
    results = {}
    fitness_windows = evaluator.windows
    try:
        evaluator.windows = windows
        for row in rows:
            masks = evaluator.masks(compile_tree(parse(row["expression"], search.pset)))
            results[row["expression"]] = round(math.exp(evaluator.perplexity_with(masks)[0].mean().item()), 4)
    finally:
        evaluator.windows = fitness_windows
    write_json_atomic(search.store.path / "final.json", {"protocol": spec.describe(), "test_perplexity": results})
    return results
