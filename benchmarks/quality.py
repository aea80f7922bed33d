"""Post-pruning quality of every baseline and of discovered metrics, one table per sparsity pattern.

    METRIC_SEARCH_DATA=../shared/data .venv/bin/python benchmarks/quality.py [--structures unstructured,2:4] \
        [--device cuda] [--metric "seeded=runs/pz-50-seeded:best" ...] [--windows 128] [--seqlen 512] \
        [--baselines wanda,gblm,pruner-zero,ria] [--no-reference]

Every row prunes SmolLM2 (``--model``) from the same dense weights with the same calibration (the default
preset: 16 × 512 tokens of WikiText-2 valid, seed 0) and is measured on the same first ``--windows``
windows of WikiText-2 **test** (Wanda's protocol). Score methods prune one-shot, the search's protocol
(``--sequential``: block by block); SparseGPT and Wanda++ update weights block by block and are listed for
reference. ``--metric LABEL=REF`` adds a discovered metric (any ``prune --metric`` reference); a label
ending in ``+owl`` prunes with OWL's layer-wise allocation. The last column is the paired per-window NLL
difference against the best mask-only baseline (the best of Wanda, GBLM, Pruner-Zero and RIA on this
table, chosen after the fact, which favours the baselines; dense when none is listed), with its standard error.
``--baselines`` picks the baseline rows (default: all); the rows are deterministic on one device, so a
partial table can be merged with an earlier full one.
"""
from __future__ import annotations

import argparse
import math
import time

from evaluators import (Calibration, calibration_windows, evaluation_windows, get_pruner, load_model,
                        parse_structure, prunable_linears)
from evaluators.allocation import allocate
from evaluators.perplexity import window_nlls
from metric_search.results.metrics import load_metric

MASK_ONLY = ("wanda", "gblm (l2)", "pruner-zero", "ria")
BASELINES = {  # --baselines key (a method name, +owl for OWL's allocation): table label
    "magnitude": "magnitude", "wanda": "wanda", "gblm": "gblm (l2)", "pruner-zero": "pruner-zero", "ria": "ria",
    "wanda+owl": "wanda+owl", "ria+owl": "ria+owl",
    "sparsegpt": "sparsegpt (updates weights)", "wanda++": "wanda++ (updates weights)",
}


def methods(baselines: list[str], metrics: list[str]) -> dict[str, object]:
    rows = {BASELINES[key]: get_pruner(key.removesuffix("+owl")) for key in baselines}
    for item in metrics:
        label, _, ref = item.partition("=")
        rows[label] = load_metric(ref)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the device's)")
    parser.add_argument("--structures", default="unstructured,2:4")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--metric", action="append", default=[], help="LABEL=REF; LABEL ending in +owl uses OWL")
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sequential", action="store_true", help="score methods block by block")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"comma list of baseline rows (default: all of {', '.join(BASELINES)})")
    parser.add_argument("--no-reference", action="store_true", help="skip SparseGPT and Wanda++")
    args = parser.parse_args()
    if args.windows < 2:
        parser.error("--windows must be ≥ 2 (the paired difference needs a standard error)")
    baselines = [key.strip() for key in args.baselines.split(",") if key.strip()]
    unknown = [key for key in baselines if key not in BASELINES]
    if unknown:
        parser.error(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if args.no_reference:
        baselines = [key for key in baselines if key not in ("sparsegpt", "wanda++")]
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    dense = {name: linear.weight.detach().clone() for name, linear in prunable_linears(model).items()}
    cal, spec = calibration_windows(tokenizer, "wikitext2", 16, 512, 0)
    calibration = Calibration(cal, spec.describe())
    test, test_spec = evaluation_windows(tokenizer, "wikitext2", "test", args.seqlen, args.windows)
    print(f"protocol: WikiText-2 test, first {test.shape[0]} windows of {args.seqlen} tokens; calibration 16×512 "
          f"WikiText-2 valid (seed 0); {'sequential' if args.sequential else 'one-shot'} score methods", flush=True)
    nll = {"dense": window_nlls(model, test)}
    for structure_text in args.structures.split(","):
        structure = parse_structure(structure_text)
        results = {"dense": nll["dense"]}
        for label, pruner in methods(baselines, args.metric).items():
            owl = label.endswith("+owl")
            if owl and not structure.unstructured:
                continue
            for name, linear in prunable_linears(model).items():
                linear.weight.data.copy_(dense[name])
            t0 = time.perf_counter()
            sparsity = allocate(model, calibration, args.sparsity, structure, "owl" if owl else "uniform",
                                progress=False)
            report = pruner.prune(model, calibration, sparsity, structure, sequential=args.sequential,
                                  progress=False)
            results[label] = window_nlls(model, test)
            print(f"{structure_text} {label}: {math.exp(results[label].mean().item()):.2f} "
                  f"(sparsity {report.overall_sparsity:.4f}, {time.perf_counter() - t0:.0f} s)", flush=True)
        mask_only = [k for k in MASK_ONLY if k in results]
        best = min(mask_only or ["dense"], key=lambda k: results[k].mean().item())
        print(f"\n### {structure_text} at sparsity {args.sparsity if structure.unstructured else structure.sparsity}\n")
        print(f"| method | test perplexity | Δ NLL vs {best} (paired, ± s.e.) |\n|---|---|---|")
        for label, values in results.items():
            diff = values - results[best]
            cell = "–" if label in (best, "dense") else f"{diff.mean().item():+.4f} ± {diff.std().item() / math.sqrt(len(diff)):.4f}"
            print(f"| {label} | {math.exp(values.mean().item()):.2f} | {cell} |")
        print(flush=True)
    for name, linear in prunable_linears(model).items():
        linear.weight.data.copy_(dense[name])


if __name__ == "__main__":
    main()
