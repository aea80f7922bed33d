"""What runs inside an evaluation worker: the model, statistics and fitness windows, loaded once.

A worker (this process when ``n_jobs == 1``; a joblib, Dask or Ray worker otherwise) keeps one
``FitnessEvaluator`` per search problem in a module-level cache, so the model and the statistics are
loaded once per worker, not once per candidate. Statistics come from the on-disk cache the main process
filled before the first evaluation.
"""
from __future__ import annotations

import hashlib
import json
import os

from evaluators import (Calibration, calibration_windows, compute_statistics, fitness_windows, load_model,
                        parse_structure)
from evaluators.allocation import allocate, layer_sparsities
from evaluators.fitness import FitnessEvaluator, FitnessResult
from primitives import compile_tree, parse

from .config import FITNESS_LOSSES, PROBLEM_KEYS

_EVALUATORS: dict[str, object] = {}


def problem(config: dict) -> dict:
    return {k: config[k] for k in PROBLEM_KEYS}


def load_problem(spec: dict, progress: bool = False):
    """Model, calibration statistics and fitness windows for a problem (the expensive part)."""
    model, tokenizer = load_model(spec["model"], spec["device"], spec["dtype"] or None)
    data_dir = spec["data_dir"] or None
    cal, cal_spec = calibration_windows(tokenizer, spec["data"], spec["nsamples"], spec["calib_seqlen"],
                                        spec["seed"], data_dir)
    needs = tuple(leaf for leaf in spec["leaves"] if leaf != "W")
    stats, _ = compute_statistics(model, cal, cal_spec.describe(), needs, spec["grad_norm"], progress=progress)
    windows, _ = fitness_windows(tokenizer, spec["data"], spec["fitness_windows"], spec["fitness_seqlen"],
                                        data_dir)
    structure = parse_structure(spec["structure"])
    calibration = Calibration(cal, cal_spec.describe())
    allocation = allocate(model, calibration, spec["sparsity"], structure, spec["allocation"], progress=progress)
    return FitnessEvaluator(model, stats, windows, spec["sparsity"], structure, spec["batch_size"],
                            spec["mask_fingerprint"] or None, tokenizer=tokenizer,
                            layer_sparsity=layer_sparsities(model, allocation), loss=FITNESS_LOSSES[spec["fitness"]])


def _problem_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def evaluator_for(spec: dict, progress: bool = False):
    key = _problem_key(spec)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = load_problem(spec, progress)
    return _EVALUATORS[key]


def register_evaluator(spec: dict, evaluator) -> None:
    """Use ``evaluator`` (a ``FitnessEvaluator`` over a model already in memory) for ``spec`` in this
    process, instead of loading the model named by the spec. For in-process searches (``n_jobs=1``) and
    benchmarks on models built from a config; the final test perplexities need its ``tokenizer``."""
    _EVALUATORS[_problem_key(spec)] = evaluator


def release_evaluators() -> None:
    """Drop this process's evaluators, and with them the models and statistics they hold."""
    _EVALUATORS.clear()


def evaluate_expression(spec: dict, expression: str, known_masks: dict[str, dict], request=None) -> dict:
    """Fitness of one expression under an ``EvaluationRequest``, as a plain dict (what crosses process
    boundaries)."""
    evaluator = evaluator_for(spec)
    try:
        fn = compile_tree(parse(expression))
    except Exception as err:  # recorded, never raised: one bad candidate must not stop a search
        result = FitnessResult(None, "error", f"{type(err).__name__}: {err}".splitlines()[0])
        return {**result.to_dict(), "worker": os.getpid()}
    return {**evaluator.evaluate(fn, known_masks, request).to_dict(), "worker": os.getpid()}
