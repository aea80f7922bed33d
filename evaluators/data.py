"""Text sources and the token windows cut from them.

Sources: ``wikitext2`` (local folder first, then the hub's ``wikitext-2-raw-v1``), ``c4`` (hub) and
``text:PATH`` (a file used for every split, or a folder holding ``<split>.txt``).

The three uses of text are kept apart (``docs/prune-and-eval.md``, "Data splits and protocols"): the
``valid`` token stream is cut at ``CALIBRATION_FRACTION``; calibration windows are drawn at random (Wanda's
protocol, seeded) from the part before the cut, fitness windows are spread evenly over the part after it, and
reported perplexity uses the ``test`` split only.
"""
from __future__ import annotations

import difflib
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


class DataError(RuntimeError):
    """Text that cannot be found or cut as asked; the message is one line for the user."""


def _local_wikitext(split: str, data_dir: str | os.PathLike | None) -> Path | None:
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]))
    for root in roots:
        for folder in (root / "wikitext-2", root):
            for name in WIKITEXT_FILES.get(split, ()):
                if (folder / name).is_file():
                    return folder / name
    return None


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
    if source == "c4":
        shard = {"train": "en/c4-train.00000-of-01024.json.gz",
                 "valid": "en/c4-validation.00000-of-00008.json.gz"}.get(split)
        if shard is None:
            raise DataError(f"c4 has no {split!r} split here (use train or valid)")
        return _hub_rows("allenai/c4", None, "train", data_files={"train": shard})
    if source.startswith("text:"):
        path = Path(source[5:]).expanduser()
        if path.is_dir():
            path = path / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"text file not found: {path}")
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    raise DataError(f"unknown text source {source!r} (use wikitext2, c4 or text:PATH)")


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
    region: str = "all"  # "calibration" | "fitness" | "all"

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


def calibration_windows(tokenizer, source="wikitext2", n=16, seqlen=512, seed=0, data_dir=None):
    """Calibration windows and their spec: random windows from the calibration region of ``valid``
    (for a source whose calibration split is ``train``, such as c4, from that split)."""
    split = "train" if source == "c4" else "valid"
    stream = token_stream(tokenizer, source, split, data_dir)
    region = "all" if source == "c4" else "calibration"
    windows = random_windows(_region(stream, region), n, seqlen, seed)
    return windows, TextSpec(source, split, seqlen, n, seed, region)


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
