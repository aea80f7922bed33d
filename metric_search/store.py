"""The run directory ``runs/<id>/``: everything a search writes, and everything ``resume`` reads back.

* ``config.json`` — the resolved config, seed and package versions (atomic).
* ``evaluations.jsonl`` — one line per candidate a worker evaluated, appended and flushed as it finishes.
* ``checkpoint.json`` — population (expressions + fitness), iteration, RNG states; no pickle (atomic).
* ``hall_of_fame.csv``, ``logbook.csv`` — derived tables, rewritten atomically after every iteration.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from evaluators.checkpoint import write_json_atomic

from .config import LEGACY_DEFAULTS

CONFIG, EVALUATIONS, CHECKPOINT = "config.json", "evaluations.jsonl", "checkpoint.json"
HALL_OF_FAME, LOGBOOK = "hall_of_fame.csv", "logbook.csv"


class RunError(RuntimeError):
    """A run directory that cannot be used as asked; one line for the user."""


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, path, config: dict) -> "RunStore":
        path = Path(path)
        if (path / CONFIG).exists():
            raise RunError(f"{path} already holds a run; continue it with: metric-search resume {path}")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path)
        write_json_atomic(path / CONFIG, config)
        return store

    @classmethod
    def open(cls, path) -> "RunStore":
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path} is not a run directory (no {CONFIG})")
        return cls(path)

    def config(self) -> dict:
        """The saved config; a key added after the run was made gets the value the run was made with."""
        return {**LEGACY_DEFAULTS, **json.loads((self.path / CONFIG).read_text())}

    def write_config(self, config: dict) -> None:
        write_json_atomic(self.path / CONFIG, config)

    # evaluations: append-only
    def append_evaluation(self, record: dict) -> None:
        with open(self.path / EVALUATIONS, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def repair(self) -> None:
        """Cut a last line left unfinished by a kill, so that later appends start on a fresh line."""
        path = self.path / EVALUATIONS
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def evaluations(self) -> list[dict]:
        """Every complete line; a line cut short by a kill is ignored (it is re-evaluated on resume)."""
        path = self.path / EVALUATIONS
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    # checkpoint and derived tables: atomic rewrites
    def write_checkpoint(self, state: dict) -> None:
        write_json_atomic(self.path / CHECKPOINT, state)

    def checkpoint(self) -> dict | None:
        path = self.path / CHECKPOINT
        return json.loads(path.read_text()) if path.is_file() else None

    def write_table(self, name: str, rows: list[dict], columns: list[str]) -> None:
        write_text_atomic(self.path / name, csv_text(rows, columns))

    def read_table(self, name: str) -> list[dict]:
        path = self.path / name
        if not path.is_file():
            return []
        return list(csv.DictReader(path.read_text().splitlines()))
