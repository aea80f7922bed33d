"""Saving a pruned model as a normal Hugging Face checkpoint, and the provenance stored beside it."""
from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

RECIPE = "pruning.json"
PACKAGES = ("metric-search", "torch", "transformers", "deap", "sympy", "numpy", "safetensors", "datasets")


def versions() -> dict[str, str]:
    """Python and package versions, recorded in every run output."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``PermissionError`` (one line) unless ``path`` can be created or written: its nearest existing
    ancestor must be a writable directory. Called before minutes of work whose result goes there."""
    path = Path(path).expanduser().absolute()
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write {path}: {ancestor} is not writable")


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pruned(model, tokenizer, output_dir: str | os.PathLike, recipe: dict) -> Path:
    """Save weights (safetensors, dense tensors holding the zeros), tokenizer and ``pruning.json``.

    Everything is written into a temporary sibling directory that is renamed into place at the end, so
    an interrupted save leaves no half-written checkpoint.
    """
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / RECIPE, {**recipe, "versions": versions()})
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
