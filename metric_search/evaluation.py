"""Evaluating candidates: two caches in front of the workers, the joblib dispatch, and multi-fidelity.

1. **Key cache** — a tree whose rank key was seen before gets that record without any work.
2. **Mask cache** — the worker scores and masks the tree, hashes the masks, and skips the forward when
   that hash was evaluated before (different trees, identical pruned model).

Both caches are rebuilt from ``evaluations.jsonl`` on resume; every record says the fidelity (windows
forwarded) its value was computed at. Work goes through ``joblib.Parallel`` with no backend named, so
``joblib.parallel_config(backend="dask")`` or ``"ray"`` moves it to a cluster; results are recorded as they
finish (``return_as="generator_unordered"``).

Statuses: ``ok`` (all fitness windows), ``raced`` (stopped early: certainly worse than the member it had
to beat), ``halved`` (dropped by successive halving), ``gated`` (skipped by the proxy gate), ``invalid``,
``error``. Only ``ok`` candidates can enter a population; the others carry their partial values.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

from joblib import Parallel, delayed

from evaluators.fitness import EvaluationRequest

from primitives import canonical_key, rank_key, to_string, tree_height, tree_size

from .worker import evaluate_expression

FINAL_WITHOUT_FORWARD = ("invalid", "error", "gated")


def fitness_of(record: dict) -> float:
    """What selection minimises: perplexity of a complete evaluation, else +inf."""
    return record["fitness"] if record["status"] == "ok" and record["fitness"] is not None else math.inf


def member_fitness(record: dict, initial: bool = False) -> float:
    """A population member's fitness: ``fitness_of``, except that an initial member raced out against the
    seeds keeps its partial perplexity (see ``MetricSearch._assign``)."""
    if initial and record["status"] == "raced" and record["fitness"] is not None:
        return record["fitness"]
    return fitness_of(record)


def _job(index: int, spec: dict, expression: str, known: dict, request: EvaluationRequest) -> tuple[int, dict]:
    return index, evaluate_expression(spec, expression, known, request)


class CandidatePool:
    """Every candidate evaluated in a run, with the counters the logbook reports."""

    def __init__(self, store, spec: dict, n_jobs: int = 1):
        self.store, self.spec, self.n_jobs = store, spec, n_jobs
        self.by_key: dict[str, dict] = {}
        self.by_mask: dict[str, dict] = {}
        self.counts = {"requested": 0, "computed": 0, "key_hits": 0, "mask_hits": 0, "failed": 0,
                       "raced": 0, "gated": 0, "halved": 0, "windows": 0}
        for record in store.evaluations():
            self._remember(record)

    def _remember(self, record: dict) -> None:
        self.by_key[record["rank_key"]] = record
        if record["status"] in ("ok", "raced", "halved") and record["mask_hash"] and not record.get("cached"):
            self.by_mask[record["mask_hash"]] = {k: record[k] for k in ("fitness", "status", "fidelity", "window_nll")}

    def _split(self, trees: list):
        """Key-cache lookups; returns records (hits filled), pending {key: [indices]} and the jobs to run."""
        records: list[dict | None] = [None] * len(trees)
        pending: dict[str, list[int]] = {}
        jobs = []
        for i, tree in enumerate(trees):
            self.counts["requested"] += 1
            key = rank_key(tree)
            if key in self.by_key:
                self.counts["key_hits"] += 1
                records[i] = self.by_key[key]
            elif key in pending:  # the same candidate twice in one batch: evaluate it once
                self.counts["key_hits"] += 1
                pending[key].append(i)
            else:
                pending[key] = [i]
                jobs.append((i, key, tree))
        return records, pending, jobs

    def _record(self, tree, key: str, result: dict, iteration: int, window_nll: list[float]) -> dict:
        cached = result["reason"] == "mask cache"
        hit = self.by_mask.get(result["mask_hash"], {}) if cached else {}
        if cached and not window_nll:  # the pruned model is the same: so are its windows (racing pairs on them)
            window_nll = list(hit.get("window_nll", []))
        record = {
            "iteration": iteration, "expression": to_string(tree), "canonical_key": canonical_key(tree),
            "rank_key": key, "size": tree_size(tree), "height": tree_height(tree),
            "fitness": result["fitness"], "status": result["status"], "reason": result["reason"],
            "mask_hash": result["mask_hash"], "cached": "mask" if cached else "",
            "fidelity": hit.get("fidelity", len(window_nll)), "seconds": round(result["seconds"], 4),
            "window_nll": window_nll, "proxies": result.get("proxies", {}), "worker": result["worker"],
            "time": time.time(),
        }
        self.store.append_evaluation(record)
        self._remember(record)
        status = record["status"]
        self.counts["mask_hits" if cached else "computed"] += 1
        self.counts["failed"] += status in ("invalid", "error")
        for name in ("raced", "gated", "halved"):
            self.counts[name] += status == name and not cached
        self.counts["windows"] += 0 if cached else len(window_nll)
        return record

    def evaluate(self, trees: list, iteration: int, request: EvaluationRequest | None = None, bar=None) -> list[dict]:
        """Records for ``trees`` in order; new ones are appended to ``evaluations.jsonl`` as they finish.

        ``bar``: a tqdm bar advanced once per tree (cache hits at once, the others as they finish).
        """
        records, pending, jobs = self._split(trees)
        by_index = {job[0]: job for job in jobs}
        if bar is not None:  # key-cache hits are done now; the rest count as their evaluation finishes
            bar.update(len(trees) - sum(len(indices) for indices in pending.values()))
        request = request or EvaluationRequest()
        for index, result in self._run([(i, to_string(t), request) for i, _k, t in jobs]):
            _, key, tree = by_index[index]
            record = self._record(tree, key, result, iteration, result["window_nll"])
            for j in pending[key]:
                records[j] = record
            if bar is not None:
                bar.update(len(pending[key]))
        return records

    def evaluate_halving(self, trees: list, iteration: int, total: int, first: int,
                         request: EvaluationRequest | None = None):
        """Successive halving: every new candidate on ``first`` windows, the better half on twice as
        many, and so on up to ``total``; candidates dropped on the way are recorded as ``halved``."""
        records, pending, jobs = self._split(trees)
        alive = {i: (key, tree) for i, key, tree in jobs}
        nll: dict[int, list[float]] = {i: [] for i in alive}
        results: dict[int, dict] = {}
        done, stop = 0, min(first, total)
        while alive:
            work = [(i, to_string(tree), replace(request or EvaluationRequest(), start=done, stop=stop))
                    for i, (_key, tree) in alive.items()]
            for index, result in self._run(work):
                results[index] = result
                nll[index] += result["window_nll"]
            finished = [i for i in alive if results[i]["status"] in FINAL_WITHOUT_FORWARD
                        or results[i]["reason"] == "mask cache" or stop >= total]
            for i in finished:
                key, tree = alive.pop(i)
                self._finish(records, pending, tree, key, results[i], iteration, nll[i])
            if not alive:
                break
            ranked = sorted(alive, key=lambda i: (sum(nll[i]) / len(nll[i]), i))
            for i in ranked[max(1, math.ceil(len(ranked) / 2)):]:
                key, tree = alive.pop(i)
                mean = sum(nll[i]) / len(nll[i])
                halved = {**results[i], "status": "halved", "fitness": math.exp(mean),
                          "reason": f"halved out after {len(nll[i])} windows"}
                self._finish(records, pending, tree, key, halved, iteration, nll[i])
            done, stop = stop, min(2 * stop, total)
        return records

    def _finish(self, records, pending, tree, key, result, iteration, window_nll):
        if result["status"] == "ok" and window_nll:
            result = {**result, "fitness": math.exp(sum(window_nll) / len(window_nll))}
        record = self._record(tree, key, result, iteration, window_nll)
        for j in pending[key]:
            records[j] = record

    def _run(self, work: list[tuple[int, str, EvaluationRequest]]):
        if self.n_jobs == 1 or len(work) <= 1:  # in process: the mask cache is live between jobs
            for i, expression, request in work:
                yield _job(i, self.spec, expression, self.by_mask, request)
            return
        known = dict(self.by_mask)
        yield from Parallel(n_jobs=self.n_jobs, return_as="generator_unordered")(
            delayed(_job)(i, self.spec, expression, known, request) for i, expression, request in work)
