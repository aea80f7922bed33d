"""Baseline pruners on SmolLM2-135M: WikiText-2 test perplexity and the time each step takes.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/baselines.py [--windows 16] [--seqlen 512]

Calibration: ``--nsamples`` random windows of ``--seqlen`` tokens from the calibration region of
WikiText-2 valid (seed 0). Perplexity: the first ``--windows`` windows of WikiText-2 test (Wanda's
protocol, see evaluators/perplexity.py). Sequential pruning is run only where it can differ from one-shot
(methods that use X); the other rows say "= one-shot".
"""
from __future__ import annotations

import argparse
import time

import torch

from evaluators import (GBLM, Calibration, Magnitude, PrunerZero, Wanda, calibration_windows,
                        evaluation_windows, load_model, parse_structure, perplexity, prunable_linears)
from evaluators.apply import checked_scores
from evaluators.masks import make_mask

METHODS = {"magnitude": Magnitude(), "wanda": Wanda(), "gblm (l1)": GBLM(grad_norm="l1"),
           "gblm (l2)": GBLM(grad_norm="l2"), "pruner-zero": PrunerZero()}
STRUCTURES = ("unstructured", "2:4", "4:8")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def masking_speed(model, calibration, dense_forward_s: float) -> str:
    """Scoring + masking of every prunable Linear at 2:4 (Wanda scores) vs one dense forward."""
    from evaluators import compute_statistics

    stats, _ = compute_statistics(model, calibration.windows, calibration.spec, ("X",), progress=False)
    linears = prunable_linears(model)
    structure = parse_structure("2:4")
    pruner = Wanda()

    def score_and_mask():
        for name, linear in linears.items():
            make_mask(checked_scores(pruner, linear.weight, stats[name], name), 0.5, structure)

    score_and_mask()
    seconds = min(timed(score_and_mask)[1] for _ in range(3))
    return (f"scoring + masking {len(linears)} layers at 2:4: {seconds:.3f} s; one dense forward over "
            f"8×512 tokens: {dense_forward_s:.3f} s; ratio {seconds / dense_forward_s:.3f} (target ≤ 0.15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16, help="WikiText-2 test windows to evaluate")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    args = parser.parse_args()
    torch.manual_seed(0)

    model, tokenizer = load_model(args.model)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    cal, cal_spec = calibration_windows(tokenizer, "wikitext2", args.nsamples, args.seqlen, seed=0)
    calibration = Calibration(cal, cal_spec.describe())
    test, test_spec = evaluation_windows(tokenizer, "wikitext2", "test", args.seqlen, args.windows)
    evaluate = lambda: perplexity(model, test, test_spec.describe(), progress=False).perplexity

    fwd_ids = torch.randint(0, tokenizer.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(fwd_ids[:1])
        dense_forward_s = min(timed(lambda: model(fwd_ids))[1] for _ in range(2))

    dense_ppl, dense_eval_s = timed(evaluate)
    rows = [("dense", "-", "-", f"{dense_ppl:.2f}", "-", "-", f"{dense_eval_s:.1f}")]
    print(f"protocol: WikiText-2 test, seqlen {args.seqlen}, first {test.shape[0]} windows "
          f"({test.shape[0] * (args.seqlen - 1)} predicted tokens); calibration {args.nsamples}×{args.seqlen} "
          f"tokens of WikiText-2 valid (calibration region, seed 0)", flush=True)
    for structure in args.structures.split(","):
        for label in args.methods.split(","):
            pruner = METHODS[label]
            for sequential in (False, True):
                if sequential and "X" not in pruner.needs:
                    rows.append((label, structure, "sequential", "= one-shot", "", "", ""))
                    continue
                model.load_state_dict(dense)
                report = pruner.prune(model, calibration, 0.5, parse_structure(structure), sequential,
                                      progress=False)
                ppl, eval_s = timed(evaluate)
                rows.append((label, structure, "sequential" if sequential else "one-shot", f"{ppl:.2f}",
                             f"{report.seconds['statistics']:.1f}", f"{report.seconds['scoring_and_masking']:.2f}",
                             f"{eval_s:.1f}"))
                print(" | ".join(rows[-1]), flush=True)
    model.load_state_dict(dense)

    header = ("method", "structure", "mode", "perplexity", "statistics s", "score+mask s", "eval s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n" + masking_speed(model, calibration, dense_forward_s))
    print("statistics s: 0.0 means a cache hit (X and G are computed once per model and calibration set)")


if __name__ == "__main__":
    main()
