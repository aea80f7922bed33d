"""Text sources and the token windows cut from them.

Sources: ``wikitext2`` (local folder first, then the hub's ``wikitext-2-raw-v1``), ``c4`` (the shards the
reference code reads: a local copy first, then the hub's ``allenai/c4``), ``c4:PATH`` (one local shard, or a
folder holding it) and ``text:PATH`` (a file used for every split, or a folder holding ``<split>.txt``).

The three uses of text are kept apart (``docs/prune-and-eval.md``, "Data splits and protocols"): the
``valid`` token stream is cut at ``CALIBRATION_FRACTION``; calibration windows are drawn at random (Wanda's
protocol, seeded) from the part before the cut, fitness windows are spread evenly over the part after it, and
reported perplexity uses the ``test`` split only. C4 calibration windows are drawn from documents, as the
reference code draws them (``document_windows``); ``CALIBRATION_PRESETS["reference"]`` is that protocol.
"""
from __future__ import annotations

import difflib
import functools
import gzip
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

CALIBRATION_FRACTION = 0.5
DATA_ENV = "METRIC_SEARCH_DATA"
WIKITEXT_FILES = {"valid": ("valid.txt", "wiki.valid.raw"), "test": ("test.txt", "wiki.test.raw"),
                  "train": ("train.txt", "wiki.train.raw")}
SPLITS = tuple(WIKITEXT_FILES)
SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid", "eval": "valid", "testing": "test"}
C4_SHARDS = {"train": "c4-train.00000-of-01024.json.gz", "valid": "c4-validation.00000-of-00008.json.gz"}
# Named calibration protocols: "default" is this project's (fast on a CPU); "reference" is what every
# reference result (Wanda, GBLM-Pruner, SparseGPT, Pruner-Zero on C4) uses: 128 C4 windows of 2048 tokens, seed 0.
CALIBRATION_PRESETS = {
    "default": {"source": "wikitext2", "n": 16, "seqlen": 512, "seed": 0},
    "reference": {"source": "c4", "n": 128, "seqlen": 2048, "seed": 0},
}


class DataError(RuntimeError):
    """Text that cannot be found or cut as asked; the message is one line for the user."""


def _local_wikitext(split: str, data_dir: str | os.PathLike | None) -> Path | None:
    for root in _data_roots(data_dir):
        for folder in (root / "wikitext-2", root):
            for name in WIKITEXT_FILES.get(split, ()):
                if (folder / name).is_file():
                    return folder / name
    return None


def _data_roots(data_dir) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    return roots + ([Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else [])


def _local_c4(split: str, data_dir) -> Path | None:
    for root in _data_roots(data_dir):
        for folder in (root / "c4" / "en", root / "c4", root / "en", root):
            if (folder / C4_SHARDS[split]).is_file():
                return folder / C4_SHARDS[split]
    return None


def _shard_rows(path: Path) -> list[str]:
    """The ``text`` of every document of a C4 shard (JSON lines, gzipped or not), read once per process."""
    stat = path.stat()
    return _read_shard(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_shard(path: str, _mtime_ns: int, _size: int) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            return [json.loads(line)["text"] for line in lines if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a C4 shard (JSON lines with a 'text' field): {err}") from None


def _c4_rows(split: str, path: str | None, data_dir) -> list[str]:
    if split not in C4_SHARDS:
        raise DataError(f"c4 has no {split!r} split here (use train or valid)")
    if path is not None:
        shard = Path(path).expanduser()
        shard = shard / C4_SHARDS[split] if shard.is_dir() else shard
        if not shard.is_file():
            raise DataError(f"C4 shard not found: {shard}")
        return _shard_rows(shard)
    local = _local_c4(split, data_dir)
    if local is not None:
        return _shard_rows(local)
    try:
        return _hub_rows("allenai/c4", None, "train", data_files={"train": f"en/{C4_SHARDS[split]}"})
    except DataError as err:
        raise DataError(f"c4 {split!r}: {C4_SHARDS[split]} not found locally (set {DATA_ENV} or --data-dir to a "
                        f"folder holding c4/{C4_SHARDS[split]}, or give c4:PATH) and {err}") from None


def _hub_rows(path: str, name: str | None, split: str, **kwargs) -> list[str]:
    try:
        # deferred: datasets (the hub fallback only) takes seconds to import
        from datasets import load_dataset

        return list(load_dataset(path, name, split=split, **kwargs)["text"])
    except Exception as err:  # datasets raises many types when offline
        raise DataError(f"cannot fetch {path} from the hub ({type(err).__name__})") from err


def check_split(split: str) -> None:
    """Refuse a split name this project does not use, suggesting the one meant (``valid`` for ``validation``)."""
    if split not in SPLITS:
        meant = SPLIT_ALIASES.get(split) or next(iter(difflib.get_close_matches(split, SPLITS, 1)), None)
        hint = f"did you mean {meant!r}? " if meant else ""
        raise DataError(f"unknown split {split!r}; {hint}(splits: {', '.join(SPLITS)})")


def check_source(source: str, split: str, data_dir: str | os.PathLike | None = None) -> None:
    """Fail now, before a model is loaded, on a text source or split that would fail later: the rows are read
    once (a local file in milliseconds; a hub dataset is fetched into its cache, as it would be anyway)."""
    load_rows(source, split, data_dir)


def load_rows(source: str, split: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The rows (lines or documents) of one split of a text source."""
    check_split(split)
    if source == "wikitext2":
        local = _local_wikitext(split, data_dir)
        if local is not None:
            # Keep the file's lines as rows so that joining reproduces the hub dataset's layout.
            return local.read_text(encoding="utf-8").splitlines(keepends=True)
        try:
            hub_split = {"valid": "validation"}.get(split, split)
            return _hub_rows("wikitext", "wikitext-2-raw-v1", hub_split)
        except DataError as err:
            raise DataError(
                f"wikitext2 {split!r} not found locally (set {DATA_ENV} or --data-dir to a folder holding "
                f"wikitext-2/{WIKITEXT_FILES.get(split, ('?',))[0]}) and {err}"
            ) from None
    if source == "c4" or source.startswith("c4:"):
        return _c4_rows(split, source[3:] or None, data_dir)
    if source.startswith("text:"):
        path = Path(source[5:]).expanduser()
        if path.is_dir():
            path = path / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"text file not found: {path}")
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    raise DataError(f"unknown text source {source!r} (use wikitext2, c4, c4:PATH or text:PATH)")


def tokenize_stream(tokenizer, rows: list[str]) -> torch.Tensor:
    """Wanda's protocol: rows joined with two newlines, one BOS at the very start, 1-D token ids."""
    ids = tokenizer("\n\n".join(rows), return_tensors="pt", add_special_tokens=True).input_ids[0]
    bos = tokenizer.bos_token_id
    if bos is not None and (ids.numel() == 0 or ids[0].item() != bos):
        ids = torch.cat([torch.tensor([bos]), ids])
    return ids


@dataclass(frozen=True)
class TextSpec:
    """Where windows come from; ``describe()`` goes into every saved result."""

    source: str = "wikitext2"
    split: str = "valid"
    seqlen: int = 512
    n_windows: int = 16
    seed: int = 0
    region: str = "all"  # "calibration" | "fitness" | "all" | "documents" (C4 calibration)

    def describe(self) -> dict:
        return asdict(self)


_stream_cache: dict[tuple, torch.Tensor] = {}


def token_stream(tokenizer, source: str, split: str, data_dir=None) -> torch.Tensor:
    """Tokenised split, memoised per process (tokenising WikiText-2 takes a few seconds)."""
    key = (tokenizer.name_or_path, len(tokenizer), source, split, str(data_dir))
    if key not in _stream_cache:
        _stream_cache[key] = tokenize_stream(tokenizer, load_rows(source, split, data_dir))
    return _stream_cache[key]


def _region(stream: torch.Tensor, region: str) -> torch.Tensor:
    cut = int(stream.numel() * CALIBRATION_FRACTION)
    return {"calibration": stream[:cut], "fitness": stream[cut:], "all": stream}[region]


def random_windows(stream: torch.Tensor, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seqlen`` tokens at seeded random offsets (Wanda's calibration sampler)."""
    if stream.numel() <= seqlen:
        raise DataError(f"text has {stream.numel()} tokens, fewer than one window of {seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, stream.numel() - seqlen - 1) for _ in range(n)]
    return torch.stack([stream[s:s + seqlen] for s in starts])


def consecutive_windows(stream: torch.Tensor, seqlen: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows from the start, the tail shorter than ``seqlen`` dropped."""
    n = stream.numel() // seqlen
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise DataError(f"text has {stream.numel()} tokens, fewer than one window of {seqlen}")
    return stream[: n * seqlen].reshape(n, seqlen)


def document_windows(tokenizer, documents: list[str], n: int, seqlen: int, seed: int,
                     max_draws: int = 10_000) -> torch.Tensor:
    """``n`` windows of ``seqlen`` tokens the way the reference code samples C4 (Wanda's ``get_c4``): draw a
    document at random until one has more than ``seqlen`` tokens, then a random window of it; seeded
    ``random`` draws in the same order, so the same shard, tokenizer and seed give the same windows."""
    rng, windows = random.Random(seed), []
    for _ in range(n):
        for _draw in range(max_draws):
            ids = tokenizer(documents[rng.randint(0, len(documents) - 1)], return_tensors="pt").input_ids[0]
            if ids.numel() > seqlen:
                break
        else:
            raise DataError(f"no document with more than {seqlen} tokens in {max_draws} draws")
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return torch.stack(windows)


def is_c4(source: str) -> bool:
    return source == "c4" or source.startswith("c4:")


def calibration_windows(tokenizer, source="wikitext2", n=16, seqlen=512, seed=0, data_dir=None):
    """Calibration windows and their spec: random windows from the calibration region of ``valid``; for C4,
    windows of random ``train`` documents (``document_windows``, the reference protocol)."""
    if is_c4(source):
        windows = document_windows(tokenizer, load_rows(source, "train", data_dir), n, seqlen, seed)
        return windows, TextSpec(source, "train", seqlen, n, seed, "documents")
    stream = token_stream(tokenizer, source, "valid", data_dir)
    windows = random_windows(_region(stream, "calibration"), n, seqlen, seed)
    return windows, TextSpec(source, "valid", seqlen, n, seed, "calibration")


def calibration_split(source: str) -> str:
    """The split calibration windows are drawn from: ``train`` for C4, ``valid`` otherwise."""
    return "train" if is_c4(source) else "valid"


def resolve_calibration(preset: str | None = None, **given) -> dict:
    """``{"source", "n", "seqlen", "seed"}`` of a named preset (``CALIBRATION_PRESETS``, default "default"),
    with every value in ``given`` that is not ``None`` taking precedence."""
    name = preset or "default"
    if name not in CALIBRATION_PRESETS:
        raise DataError(f"unknown calibration preset {name!r}; choose from {', '.join(CALIBRATION_PRESETS)}")
    return {**CALIBRATION_PRESETS[name], **{k: v for k, v in given.items() if v is not None}}


def fitness_windows(tokenizer, source="wikitext2", n=8, seqlen=512, data_dir=None):
    """Search-time fitness windows: ``n`` windows spread evenly over the region after the calibration cut
    of ``valid`` (first and last included), in order.

    Spread, not the first ``n``: on SmolLM2 the first 16 windows ranked |W|²·X above Wanda while 48
    windows across the region (and 128 of test) ranked it below, so a search fitted to one stretch of text.
    """
    stream = _region(token_stream(tokenizer, source, "valid", data_dir), "fitness")
    windows = consecutive_windows(stream, seqlen)
    picked = torch.linspace(0, windows.shape[0] - 1, min(n, windows.shape[0])).round().long()
    windows = windows[picked]
    return windows, TextSpec(source, "valid", seqlen, windows.shape[0], 0, "fitness")


def evaluation_windows(tokenizer, source="wikitext2", split="test", seqlen=2048, limit=None, data_dir=None):
    """Reported-perplexity windows: the whole split, consecutive (Wanda's protocol)."""
    windows = consecutive_windows(token_stream(tokenizer, source, split, data_dir), seqlen, limit)
    return windows, TextSpec(source, split, seqlen, windows.shape[0], 0, "all")
