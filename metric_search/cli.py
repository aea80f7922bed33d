"""``metric-search``: a thin command line over the Python API.

Every user error (bad flag value, missing model or data, malformed expression, unwritable output) ends with
one line on stderr and exit status 2, found before any model is loaded where it can be, and nothing
half-written is left behind. A traceback (exit 1) is a bug. Ctrl-C and SIGTERM end a command cleanly
(exit 130 / 143); an interrupted search continues with ``metric-search resume``.
"""
from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

USER_ERROR = 2
# the OS refusing a write is the user's to fix (a full disk, a read-only or foreign folder), not a bug
USER_OS_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EEXIST, errno.ENOTDIR,
                  errno.EISDIR, errno.ENOENT)


class UsageError(Exception):
    """Bad input detected by the CLI itself."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported like every other user error: one line, exit 2 (``--help`` shows
    the usage)."""

    def error(self, message: str):
        self.exit(USER_ERROR, f"{self.prog}: error: {message.splitlines()[0]}\n")


def _add_calibration_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (a preset, then any flag given overrides its value)")
    g.add_argument("--calib-preset", default=None, help="default (wikitext2, 16 × 512, seed 0) | reference (the "
                                                        "reference code's protocol: c4, 128 × 2048, seed 0)")
    g.add_argument("--calib-data", default=None, help="wikitext2 | c4 | c4:PATH (a local shard) | text:PATH")
    g.add_argument("--nsamples", type=int, default=None, help="calibration windows")
    g.add_argument("--calib-seqlen", type=int, default=None, help="tokens per calibration window")
    g.add_argument("--seed", type=int, default=None, help="seed of the calibration window sampler")
    g.add_argument("--data-dir", default=None, help="folder holding wikitext-2/ (default: $METRIC_SEARCH_DATA)")
    g.add_argument("--no-cache", action="store_true", help="recompute statistics instead of using the cache")


def _add_device_flags(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (accelerate's device map over the "
                                                   "visible GPUs) (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on the CPU, "
                                                 "bfloat16 on a GPU)")


def _placement(args) -> tuple:
    """``--device``/``--dtype`` checked before anything is loaded (a missing GPU is a user error)."""
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from evaluators.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def build_pruner(args):
    """The pruner named by ``--method`` (or any metric reference given to ``--metric``) with its options."""
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from evaluators import get_pruner

    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from .results.metrics import load_metric

    # --score takes any metric reference (baseline, runs/<id>:best, exported file, expression)
    score = load_metric(args.score, grad_norm=args.grad_norm) if getattr(args, "score", None) else None
    if getattr(args, "metric", None):
        return load_metric(args.metric, grad_norm=args.grad_norm, ro=not args.no_ro, score=score)
    return get_pruner(args.method or "wanda", grad_norm=args.grad_norm, ro=not args.no_ro, score=score,
                      alpha=args.gblm_alpha, a=args.ria_a,
                      group=args.ria_group if args.method == "ria" else args.magnitude_group)


def cmd_prune(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from evaluators import Calibration, calibration_windows, load_model, save_pruned
    from evaluators.allocation import allocate, check_allocation
    from evaluators.checkpoint import check_writable
    from evaluators.data import calibration_split, check_source, resolve_calibration
    from evaluators.devices import dtype_name
    from evaluators.masks import resolve_sparsity
    from evaluators.models import check_model_spec

    sparsity, structure = resolve_sparsity(args.sparsity, args.structure)
    if args.metric and args.method:
        raise UsageError("give either --method or --metric, not both")
    calib = resolve_calibration(args.calib_preset, source=args.calib_data, n=args.nsamples,
                                seqlen=args.calib_seqlen, seed=args.seed)
    if calib["n"] < 1 or calib["seqlen"] < 2:
        raise UsageError("--nsamples must be ≥ 1 and --calib-seqlen ≥ 2")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output {out} already exists and is not an empty directory")
    check_writable(out)
    check_allocation(args.allocation, structure)
    device, dtype = _placement(args)
    pruner = build_pruner(args)
    pruner.check(structure)
    check_model_spec(args.model)
    calibrated = bool(pruner.needs) or args.sequential or args.allocation != "uniform"
    if calibrated:
        check_source(calib["source"], calibration_split(calib["source"]), args.data_dir)
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, device, dtype)
    calibration = None
    if calibrated:
        windows, spec = calibration_windows(tokenizer, calib["source"], calib["n"], calib["seqlen"],
                                            calib["seed"], args.data_dir)
        calibration = Calibration(windows, spec.describe(), use_cache=not args.no_cache)
    allocation = allocate(model, calibration, sparsity, structure, args.allocation)
    report = pruner.prune(model, calibration, allocation, structure, sequential=args.sequential)
    recipe = {"model": args.model, "device": device, "dtype": dtype_name(dtype), "pruner": pruner.describe(),
              "calibration_preset": (args.calib_preset or "default") if calibrated else None,
              **report.to_dict(),
              "seconds_total": time.perf_counter() - t0}
    save_pruned(model, tokenizer, out, recipe)
    print(f"pruned {args.model} with {pruner.name} ({report.structure}, sequential={report.sequential}): "
          f"achieved sparsity {report.overall_sparsity:.4f} over {len(report.layer_sparsity)} layers → {out} "
          f"({dtype_name(dtype)})")
    return 0


def cmd_eval(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from evaluators import evaluation_windows, load_model, perplexity
    from evaluators.data import check_source
    from evaluators.models import check_model_spec

    if args.seqlen < 2 or (args.max_windows is not None and args.max_windows < 1) or args.batch_size < 1:
        raise UsageError("--seqlen must be ≥ 2, --max-windows ≥ 1 and --batch-size ≥ 1")
    placement = _placement(args)
    check_model_spec(args.model)
    check_source(args.data, args.split, args.data_dir)
    model, tokenizer = load_model(args.model, *placement)
    windows, spec = evaluation_windows(tokenizer, args.data, args.split, args.seqlen, args.max_windows,
                                       args.data_dir)
    result = perplexity(model, windows, spec.describe(), batch_size=args.batch_size)
    print(json.dumps({**result.to_dict(), "model": args.model}) if args.json else f"{args.model}: {result}")
    return 0


def cmd_search(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from .config import load_config
    from .search import MetricSearch

    config = load_config(args.config, args.overrides)
    args.resume_hint = args.run_dir or str(Path(config.output_dir) / config.name)
    search = MetricSearch(config).fit(args.run_dir)
    print(f"run directory: {search.run_dir_}")
    return 0


def cmd_resume(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from .search import MetricSearch

    args.resume_hint = args.run_dir
    search = MetricSearch.resume(args.run_dir, args.overrides)
    print(f"run directory: {search.run_dir_}")
    return 0


def cmd_export(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from .results.export import export_run

    results = export_run(args.run_dir, args.index, args.format, args.output)
    for stem, result in results.items():
        print(f"{stem}: {result['expression']}")
        for fmt, path in result["files"].items():
            print(f"  {fmt:8} {path}")
        for fmt, reason in result["skipped"].items():
            print(f"  {fmt:8} skipped: {reason}")
    return 0


def cmd_analyze(args) -> int:
    if args.top < 1:
        raise UsageError(f"--top must be ≥ 1, got {args.top}")
    if args.compare:
        # deferred: torch loads only for the commands that need it (`--help` stays fast)
        from .results.compare import compare_runs

        result = compare_runs(args.run_dirs, args.output, args.top, plots=not args.no_plots,
                              partial=not args.full_only)
        print("\n".join(f"- {s}" for s in result["sentences"]))
        print(f"report: {result['files'][0]}")
        return 0
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from .results.analysis import analyze_run

    if len(args.run_dirs) != 1:
        raise UsageError("analyze takes one run directory (add --compare to compare several)")
    reevaluation = None
    if args.reevaluate:
        # deferred: torch loads only for the commands that need it (`--help` stays fast)
        from evaluators.data import check_split
        from evaluators.masks import resolve_sparsity
        from .results.reevaluate import reevaluate

        check_split(args.split)
        if args.sparsity is not None or args.structure:
            resolve_sparsity(args.sparsity, args.structure)  # fail before loading the model
        if args.reevaluate_top < 1 or args.windows < 0 or args.seqlen < 2:
            raise UsageError("--reevaluate-top must be ≥ 1, --windows ≥ 0 and --seqlen ≥ 2")
        device, dtype = _placement(args)

        reevaluation = reevaluate(args.run_dirs[0], top=args.reevaluate_top, sequential=not args.one_shot,
                                  sparsity=args.sparsity, structure=args.structure, split=args.split,
                                  windows=args.windows, seqlen=args.seqlen, device=device, dtype=dtype)
    summary = analyze_run(args.run_dirs[0], args.output, args.top, plots=not args.no_plots,
                          reevaluation=reevaluation, partial=not args.full_only)
    print("\n".join(f"- {p}" for p in summary["principles"]))
    print(f"report: {summary['files']['report']}")
    return 0


def cmd_ops(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from primitives import operator_table

    print(operator_table())
    return 0


def cmd_simplify(args) -> int:
    # deferred: torch loads only for the commands that need it (`--help` stays fast)
    from primitives import simplify_report

    print(simplify_report(args.expression))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="metric-search", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model with a method and save a Hugging Face checkpoint")
    p.add_argument("--model", default="smollm2", help="smollm2 | HF id | checkpoint dir | .gguf (default: smollm2)")
    p.add_argument("--method", default=None, help="magnitude | wanda | gblm | pruner-zero | ria | wanda++ | "
                                                  "sparsegpt | besa (default: wanda)")
    p.add_argument("--metric", default=None, help="any metric instead of --method: runs/<id>:best | runs/<id>:N | "
                                                  "an exported .json | an expression | a baseline name")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights to zero (default: 0.5)")
    p.add_argument("--structure", default=None, help="N:M such as 2:4 (default: unstructured)")
    p.add_argument("--sequential", action="store_true", help="prune block by block (Wanda's protocol)")
    p.add_argument("--allocation", default="uniform", help="sparsity per decoder block: uniform (default) | owl "
                                                            "(fewer pruned where activation outliers are; unstructured)")
    p.add_argument("--grad-norm", choices=("l1", "l2"), default=None,
                   help="gradient norm of G (default: l2, or the one a --metric run was searched with)")
    p.add_argument("--gblm-alpha", type=float, default=None,
                   help="gblm: weight of the gradient term on G (default: 100, the reference code's scale; 1: the "
                        "unscaled sum, which ranks almost like wanda)")
    p.add_argument("--magnitude-group", choices=("layer", "row"), default=None,
                   help="magnitude: compare |W| over the whole layer (default, as the reference code) or per row")
    p.add_argument("--ria-a", type=float, default=None, help="ria: exponent a of X^a (default: 0.5, the reference's)")
    p.add_argument("--ria-group", choices=("layer", "row"), default=None,
                   help="ria: unstructured comparison over the whole layer (default, the reference's) or per row")
    p.add_argument("--no-ro", action="store_true", help="wanda++: regional gradient score only, no regional optimisation")
    p.add_argument("--score", default=None, help="besa: metric giving the within-row ranking, any --metric "
                                                 "reference (default: wanda)")
    p.add_argument("--output", required=True, help="directory for the pruned checkpoint (must not exist)")
    _add_device_flags(p)
    _add_calibration_flags(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("eval", help="perplexity of a model under Wanda's protocol")
    p.add_argument("model", help="smollm2 | HF id | checkpoint dir | .gguf")
    p.add_argument("--data", default="wikitext2", help="wikitext2 | c4 | text:PATH (default: wikitext2)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default: 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default: 1)")
    p.add_argument("--data-dir", default=None, help="folder holding wikitext-2/ (default: $METRIC_SEARCH_DATA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_device_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("search", help="evolve pruning metrics with genetic programming")
    p.add_argument("--config", default=None, help="TOML config (runs/*.toml); defaults when omitted")
    p.add_argument("--run-dir", default=None, help="run directory (default: <output_dir>/<name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. iterations=20")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue a stopped or killed search (iterations=N extends it)")
    p.add_argument("run_dir", help="the run directory, runs/<id>")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. iterations=400")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("export", help="write a run's metrics as JSON, standalone .py, SymPy, LaTeX, Pruner-Zero JSON")
    p.add_argument("run_dir", help="the run directory, runs/<id>")
    p.add_argument("--index", default="best", help="best | N (hall-of-fame rank) | all | a list such as 1,3 "
                                                   "(default: best)")
    p.add_argument("--format", default="json,py,sympy,latex,pz-json",
                   help="comma list of json, py, sympy, latex, pz-json, or all (default: all)")
    p.add_argument("--output", default=None, help="output folder (default: runs/<id>/metrics)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="relate the shape of evaluated metrics to their perplexity; report + plots")
    p.add_argument("run_dirs", nargs="+", metavar="run_dir", help="runs/<id> (several with --compare)")
    p.add_argument("--compare", action="store_true", help="compare runs: does the ranking of metrics transfer?")
    p.add_argument("--output", default=None, help="output folder (default: runs/<id>/analysis, "
                                                  "with --compare runs/<first>/analysis/compare)")
    p.add_argument("--top", type=int, default=10, help="how many top metrics to list and compare (default: 10)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--full-only", action="store_true", help="leave candidates stopped early (raced, halved) out of "
                                                            "the correlations too")
    g = p.add_argument_group("re-evaluation (optional, loads the model)")
    g.add_argument("--reevaluate", action="store_true", help="prune the hall of fame again under another protocol "
                                                             "and correlate with the search fitness")
    g.add_argument("--reevaluate-top", type=int, default=5, help="hall-of-fame entries to re-evaluate (default: 5)")
    g.add_argument("--one-shot", action="store_true", help="re-prune one-shot instead of sequentially")
    g.add_argument("--sparsity", type=float, default=None, help="another sparsity (default: the run's)")
    g.add_argument("--structure", default=None, help="another structure, e.g. 2:4 (default: the run's)")
    g.add_argument("--split", default="test", help="perplexity split (default: test)")
    g.add_argument("--windows", type=int, default=16, help="perplexity windows, 0 = whole split (default: 16)")
    g.add_argument("--seqlen", type=int, default=512, help="tokens per window (default: 512)")
    _add_device_flags(g)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("ops", help="print the operator table of the search space")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("simplify", help="parse an expression and print its simplified form and keys")
    p.add_argument("expression", help='e.g. "mul(abs(W), X)"')
    p.set_defaults(func=cmd_simplify)
    return parser


def _version() -> str:
    try:
        return metadata.version("metric-search")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as from Ctrl-C (temp files removed)."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch is imported
    # deferred: the error types live beside torch; importing them after parsing keeps `--help` fast
    from evaluators import DataError, MaskError, ModelError
    from evaluators.devices import DeviceError
    from evaluators.methods import MethodError
    from primitives import ExpressionError
    from .config import ConfigError
    from .results.metrics import MetricError
    from .store import RunError

    user_errors = (UsageError, DataError, MaskError, ModelError, ExpressionError, ConfigError, RunError,
                   MetricError, DeviceError, MethodError)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except user_errors as err:
        print(f"metric-search {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return USER_ERROR
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say
        sys.stderr.close()
        return 0
    except OSError as err:
        if err.errno not in USER_OS_ERRORS:
            raise
        text = err.strerror or str(err)
        where = f": {err.filename}" if err.filename and str(err.filename) not in text else ""
        print(f"metric-search {args.command}: error: {text.splitlines()[0]}{where}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt as err:
        hint = getattr(args, "resume_hint", None)
        resumable = hint and (Path(hint) / "config.json").is_file()  # a set-up cut short leaves no run
        again = f"; continue with: metric-search resume {hint}" if resumable else ""
        print(f"metric-search {args.command}: interrupted{again}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
