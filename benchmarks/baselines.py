"""Baseline pruners on SmolLM2-135M: WikiText-2 test perplexity and the time each step takes.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/baselines.py [--windows 16] [--seqlen 512]
    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/baselines.py --modes sequential --no-cache \
        --methods "wanda,wanda++ (rgs),wanda++ (rgs+ro),sparsegpt,besa (wanda)" --structures unstructured,2:4

Calibration: ``--nsamples`` random windows of ``--seqlen`` tokens from the calibration region of
WikiText-2 valid (seed 0). Perplexity: the first ``--windows`` windows of WikiText-2 test (Wanda's
protocol, see evaluators/perplexity.py). Sequential pruning is run only where it can differ from one-shot
(methods that use X or R); the other rows say "= one-shot". Block-wise methods (Wanda++ with RO, SparseGPT,
BESA) are block-sequential by construction and run once, in the sequential rows. "prune s" is the wall
time of ``pruner.prune`` (statistics included; use ``--no-cache`` so no statistic comes from the cache) and
"× wanda" divides it by Wanda's in the same structure and mode ("(cpu)": the same with process CPU time,
which other jobs on a shared machine disturb less). ``--besa-score`` adds BESA over another
ranking: a baseline name or a metric expression (compiled by ``primitives``). When a Wanda++ method runs,
the cost of regional gradients is compared with GBLM's full-model gradient pass on the same windows.
"""
from __future__ import annotations

import argparse
import time

import torch

from evaluators import (BESA, GBLM, Calibration, Magnitude, PrunerZero, ScoreFunction, SparseGPT, Wanda,
                        calibration_windows, evaluation_windows, get_pruner, load_model, parse_structure,
                        perplexity, prunable_linears, wanda_plus_plus)
from evaluators.apply import checked_scores
from evaluators.masks import make_mask
from evaluators.methods import BASELINES
from evaluators.pruners import BlockwisePruner

METHODS = {"magnitude": Magnitude(), "magnitude (per row)": Magnitude(group="row"), "wanda": Wanda(),
           "gblm (l1)": GBLM(grad_norm="l1"), "gblm (l2)": GBLM(grad_norm="l2"),
           "gblm (l1) α=1": GBLM(grad_norm="l1", alpha=1.0), "gblm (l2) α=1": GBLM(grad_norm="l2", alpha=1.0),
           "pruner-zero": PrunerZero(),
           "wanda++ (rgs)": wanda_plus_plus(ro=False), "wanda++ (rgs+ro)": wanda_plus_plus(),
           "sparsegpt": SparseGPT(), "besa (wanda)": BESA(score=Wanda())}
DEFAULT_METHODS = ("magnitude", "magnitude (per row)", "wanda", "gblm (l1)", "gblm (l2)", "gblm (l2) α=1",
                   "pruner-zero")
STRUCTURES = ("unstructured", "2:4", "4:8")


def score_pruner(text: str):
    """A baseline by name, or a metric expression compiled by ``primitives`` (for BESA's ranking)."""
    if text in BASELINES:
        return get_pruner(text)
    from primitives import compile_tree

    fn = compile_tree(text)
    return ScoreFunction(fn=lambda W, stats: fn(W=W, **stats), name=text,
                         needs=tuple(leaf for leaf in fn.leaves if leaf != "W"))


def gradient_cost(model, calibration) -> str:
    """Seconds of GBLM's full-model gradient pass vs regional gradients on the same windows."""
    from evaluators.stats import regional_gradient_norms
    from evaluators.stats import gradient_norms

    windows = calibration.windows
    full, regional = [], []
    for _ in range(2):  # alternate and keep the best of each: other jobs on the machine add noise
        full.append(timed_cpu(lambda: gradient_norms(model, windows, "l2", progress=False))[1:])
        regional.append(timed_cpu(lambda: regional_gradient_norms(model, windows, batch_size=2, progress=False))[1:])
    (fw, fc), (rw, rc) = [tuple(min(t[i] for t in runs) for i in (0, 1)) for runs in (full, regional)]
    return (f"gradients over {windows.shape[0]}×{windows.shape[1]} calibration tokens (best of 2): GBLM full-model "
            f"backward, one window per pass: {fw:.1f} s wall / {fc:.1f} s CPU; regional, one block at a time, "
            f"2 windows per backward: {rw:.1f} s wall / {rc:.1f} s CPU; ratio regional/full {rw / fw:.2f} wall, "
            f"{rc / fc:.2f} CPU")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def timed_cpu(fn):
    """``(value, wall seconds, process CPU seconds)``: CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


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
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"from: {', '.join(METHODS)}")
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    parser.add_argument("--modes", default="one-shot,sequential", help="one-shot, sequential or both")
    parser.add_argument("--besa-score", action="append", default=[],
                        help="also run BESA with this ranking (baseline name or metric expression); repeatable")
    parser.add_argument("--no-cache", action="store_true", help="recompute statistics for every run (fair timings)")
    args = parser.parse_args()
    methods = dict(METHODS)
    for text in args.besa_score:
        methods[f"besa ({text})"] = BESA(score=score_pruner(text))
    labels = args.methods.split(",") + [f"besa ({text})" for text in args.besa_score]
    modes = args.modes.split(",")
    torch.manual_seed(0)

    model, tokenizer = load_model(args.model)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    cal, cal_spec = calibration_windows(tokenizer, "wikitext2", args.nsamples, args.seqlen, seed=0)
    calibration = Calibration(cal, cal_spec.describe(), use_cache=not args.no_cache)
    test, test_spec = evaluation_windows(tokenizer, "wikitext2", "test", args.seqlen, args.windows)
    evaluate = lambda: perplexity(model, test, test_spec.describe(), progress=False).perplexity

    fwd_ids = torch.randint(0, tokenizer.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(fwd_ids[:1])
        dense_forward_s = min(timed(lambda: model(fwd_ids))[1] for _ in range(2))

    dense_ppl, dense_eval_s = timed(evaluate)
    rows = [("dense", "-", "-", f"{dense_ppl:.2f}", "-", "-", "-", "-", "-", f"{dense_eval_s:.1f}")]
    print(f"protocol: WikiText-2 test, seqlen {args.seqlen}, first {test.shape[0]} windows "
          f"({test.shape[0] * (args.seqlen - 1)} predicted tokens); calibration {args.nsamples}×{args.seqlen} "
          f"tokens of WikiText-2 valid (calibration region, seed 0)", flush=True)
    grad_line = None
    if any(label.startswith("wanda++") for label in labels):
        grad_line = gradient_cost(model, calibration)
        print(grad_line, flush=True)
    wanda_s: dict[tuple[str, str], float] = {}
    for structure in args.structures.split(","):
        for label in labels:
            pruner = methods[label]
            blockwise = isinstance(pruner, BlockwisePruner)
            for mode in (["sequential"] if blockwise else modes):
                sequential = mode == "sequential"
                if sequential and not blockwise and not {"X", "R"} & set(pruner.needs):
                    rows.append((label, structure, mode, "= one-shot", "", "", "", "", "", ""))
                    continue
                if isinstance(pruner, BESA) and structure != "unstructured":
                    rows.append((label, structure, "block-sequential", "n/a (allocates unstructured only)",
                                 "", "", "", "", "", ""))
                    continue
                model.load_state_dict(dense)
                report, prune_s, prune_cpu = timed_cpu(lambda: pruner.prune(
                    model, calibration, 0.5, parse_structure(structure), sequential, progress=False))
                if label == "wanda":
                    wanda_s[(structure, mode)] = (prune_s, prune_cpu)
                base = wanda_s.get((structure, mode))
                ppl, eval_s = timed(evaluate)
                rows.append((label, structure, "block-sequential" if blockwise else mode, f"{ppl:.2f}",
                             f"{report.seconds['statistics']:.1f}", f"{report.seconds['scoring_and_masking']:.2f}",
                             f"{prune_s:.1f}", f"{prune_s / base[0]:.1f}" if base else "-",
                             f"{prune_cpu / base[1]:.1f}" if base else "-", f"{eval_s:.1f}"))
                print(" | ".join(rows[-1]), f"(sparsity {report.overall_sparsity:.4f})", flush=True)
    model.load_state_dict(dense)

    header = ("method", "structure", "mode", "perplexity", "statistics s", "score+mask s", "prune s", "× wanda",
              "× wanda (cpu)", "eval s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if grad_line:
        print("\n" + grad_line)
    print("\n" + masking_speed(model, calibration, dense_forward_s))
    print("statistics s: 0.0 means a cache hit (X and G are computed once per model and calibration set)")


if __name__ == "__main__":
    main()
