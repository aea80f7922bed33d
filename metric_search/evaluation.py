"""Evaluating candidates: two caches in front of the workers, and the joblib dispatch.

1. **Key cache** — a tree whose rank key was seen before gets that fitness without any work.
2. **Mask cache** — the worker scores and masks the tree, hashes the masks, and skips the forward when
   that hash was evaluated before (different trees, identical pruned model).

Both caches are rebuilt from ``evaluations.jsonl`` on resume. Work goes through ``joblib.Parallel`` with
no backend named, so ``joblib.parallel_config(backend="dask")`` or ``"ray"`` moves it to a cluster;
results are recorded as they finish (``return_as="generator_unordered"``).
"""
from __future__ import annotations

import time

from joblib import Parallel, delayed

from primitives import canonical_key, rank_key, to_string, tree_height, tree_size

from .worker import evaluate_expression


def _job(index: int, spec: dict, expression: str, known: dict) -> tuple[int, dict]:
    return index, evaluate_expression(spec, expression, known)


class CandidatePool:
    """Every candidate evaluated in a run, with the counters the logbook reports."""

    def __init__(self, store, spec: dict, n_jobs: int = 1):
        self.store, self.spec, self.n_jobs = store, spec, n_jobs
        self.by_key: dict[str, dict] = {}
        self.by_mask: dict[str, float] = {}
        self.counts = {"requested": 0, "computed": 0, "key_hits": 0, "mask_hits": 0, "failed": 0}
        for record in store.evaluations():
            self._remember(record)

    def _remember(self, record: dict) -> None:
        self.by_key[record["rank_key"]] = record
        if record["status"] == "ok" and record["mask_hash"] and not record.get("cached"):
            self.by_mask[record["mask_hash"]] = record["fitness"]

    def evaluate(self, trees: list, iteration: int) -> list[dict]:
        """Records for ``trees`` in order; new ones are appended to ``evaluations.jsonl`` as they finish."""
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
        for index, result in self._run(jobs):
            i, key, tree = next(job for job in jobs if job[0] == index)
            record = {
                "iteration": iteration, "expression": to_string(tree), "canonical_key": canonical_key(tree),
                "rank_key": key, "size": tree_size(tree), "height": tree_height(tree),
                "fitness": result["fitness"], "status": result["status"], "reason": result["reason"],
                "mask_hash": result["mask_hash"], "cached": "mask" if result["reason"] == "mask cache" else "",
                "seconds": round(result["seconds"], 4), "window_nll": result["window_nll"],
                "worker": result["worker"], "time": time.time(),
            }
            self.store.append_evaluation(record)
            self._remember(record)
            self.counts["mask_hits" if record["cached"] else "computed"] += 1
            self.counts["failed"] += record["status"] != "ok"
            for j in pending[key]:
                records[j] = record
        return records

    def _run(self, jobs):
        if self.n_jobs == 1 or len(jobs) <= 1:  # in process: the mask cache is live between jobs
            for i, _key, tree in jobs:
                yield _job(i, self.spec, to_string(tree), self.by_mask)
            return
        known = dict(self.by_mask)
        yield from Parallel(n_jobs=self.n_jobs, return_as="generator_unordered")(
            delayed(_job)(i, self.spec, to_string(tree), known) for i, _key, tree in jobs)
