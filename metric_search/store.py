"""The run directory ``runs/<id>/``: everything a search writes, and everything ``resume`` reads back.

* ``config.json`` — the resolved config, seed and package versions (atomic).
* ``evaluations.jsonl`` — one line per candidate a worker evaluated, appended and flushed as it finishes.
* ``checkpoint.json`` — population (expressions + fitness), iteration, RNG states; no pickle (atomic).
* ``hall_of_fame.csv``, ``logbook.csv`` — derived tables, rewritten atomically after every iteration.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import tempfile
from pathlib import Path

from evaluators.checkpoint import check_writable, write_json_atomic

from .config import LEGACY_DEFAULTS

CONFIG, EVALUATIONS, CHECKPOINT = "config.json", "evaluations.jsonl", "checkpoint.json"
LOCK = ".lock"  # held with flock while a process runs the search: the kernel drops it when that process dies
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
        self._lock = None

    @staticmethod
    def check_new(path) -> None:
        """Refuse, before any work, a run directory that holds a run already or cannot be written."""
        path = Path(path)
        if (path / CONFIG).exists():
            raise RunError(f"{path} already holds a run; continue it with: metric-search resume {path}")
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} is a file, not a run directory")
        check_writable(path)

    @classmethod
    def create(cls, path, config: dict) -> "RunStore":
        """Make the run directory, hold it, and save its config (the set-up has succeeded by now)."""
        cls.check_new(path)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path)
        store.lock()
        write_json_atomic(path / CONFIG, config)
        return store

    def lock(self) -> None:
        """Hold the run for this process; a second process on the same run is refused in one line. The lock
        is the kernel's (``flock``), so a killed process never leaves it stuck."""
        handle = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise RunError(f"{self.path} is in use by another process{f' (pid {holder})' if holder else ''}; "
                           f"wait for it to end or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

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

    def repair(self) -> int:
        """Cut a last line left unfinished by a kill or a power loss, so that later appends start on a fresh
        line; returns how many bytes were dropped (that candidate is evaluated again)."""
        path = self.path / EVALUATIONS
        if not path.is_file():
            return 0
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep

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
