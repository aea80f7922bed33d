"""Turn any metric reference into a pruner: the one loader behind ``prune --metric``, ``--score`` and the API.

    from metric_search.results.metrics import load_metric
    load_metric("runs/demo:best")          # the chosen metric of a run (hall-of-fame rank 1)
    load_metric("runs/demo:3")             # hall-of-fame rank 3
    load_metric("runs/demo")               # same as runs/demo:best
    load_metric("runs/demo/metrics/best.json")   # a file written by `metric-search export` (or a
                                                 # Pruner-Zero JSON tree, or our native *.tree.json)
    load_metric("mul(abs(W), X)")          # an expression (functional or infix)
    load_metric("wanda")                   # a baseline by name (magnitude, wanda, gblm, pruner-zero, ...)

Every failure is a :class:`MetricError` whose message is one line naming the reference and the problem.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from evaluators import Pruner, SymbolicPruner, get_pruner
from evaluators.data import calibration_split
from evaluators.methods import BASELINES
from primitives import ExpressionError, from_pz_json, read_expression

from ..store import CONFIG, EVALUATIONS, HALL_OF_FAME, RunStore

#: The index of a run reference: ``best`` or a 1-based hall-of-fame rank.
_RUN_REF = re.compile(r"^(?P<path>.+):(?P<index>[^:/\\]*)$")


class MetricError(ValueError):
    """A metric reference that cannot be resolved; the message is one line for the user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _number(value) -> float | None:
    """A CSV/JSON cell as a float, or ``None`` when empty or not a number."""
    if value in (None, ""):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def hall_of_fame(run_dir: str | Path) -> list[dict]:
    """A run's hall of fame as dicts (rank, fitness, expression, ...), best first.

    Read from ``hall_of_fame.csv``; a run stopped before its first table gets the same table derived from
    ``evaluations.jsonl`` (valid candidates by fitness, one per distinct mask, as the search does).

    Raises:
        MetricError: If ``run_dir`` is not a run directory.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise MetricError(f"no run directory {path}")
    if not (path / CONFIG).is_file() and not (path / EVALUATIONS).is_file():
        raise MetricError(f"{path} is not a run directory (no {CONFIG} or {EVALUATIONS})")
    store = RunStore(path)
    rows = store.read_table(HALL_OF_FAME)
    if rows:
        return [{**r, "rank": int(r["rank"]), "fitness": _number(r.get("fitness")),
                 "test_perplexity": _number(r.get("test_perplexity"))} for r in rows]
    seen, out = set(), []
    ok = [r for r in store.evaluations() if r.get("status") == "ok" and _number(r.get("fitness")) is not None]
    for r in sorted(ok, key=lambda r: r["fitness"]):
        if r.get("mask_hash") in seen:
            continue
        seen.add(r.get("mask_hash"))
        out.append({"rank": len(out) + 1, "chosen": "*" if not out else "", "complexity": r.get("size"),
                    "fitness": r["fitness"], "test_perplexity": None, "expression": r["expression"],
                    "canonical_key": r.get("canonical_key", "")})
    return out


def parse_index(index: str | int, where: str = "") -> int:
    """``"best"`` → 1, ``"3"`` or ``3`` → 3 (hall-of-fame ranks start at 1).

    Raises:
        MetricError: Anything else.
    """
    text = str(index).strip().lower()
    if text == "best":
        return 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise MetricError(f"{where}bad metric index {str(index)!r}: use 'best' or a hall-of-fame rank 1, 2, …")


def run_protocol(config: dict, final: dict | None = None) -> dict:
    """How a run measured fitness (and, if known, the reported test perplexity), from its saved config."""
    calib_split = calibration_split(config.get("data") or "wikitext2")
    out = {
        "fitness": {"metric": "perplexity (exp of mean token NLL; lower is better)", "model": config.get("model"),
                    "sparsity": config.get("sparsity"), "structure": config.get("structure"), "mode": "one-shot",
                    "data": config.get("data"), "split": "valid", "region": "fitness",
                    "windows": config.get("fitness_windows"), "seqlen": config.get("fitness_seqlen")},
        "calibration": {"data": config.get("data"), "split": calib_split,
                        "region": "documents" if calib_split == "train" else "calibration",
                        "nsamples": config.get("nsamples"), "seqlen": config.get("calib_seqlen"),
                        "seed": config.get("seed"), "grad_norm": config.get("grad_norm", "l2")},
    }
    if final and final.get("protocol"):
        out["test"] = final["protocol"]
    return out


def run_metric(run_dir: str | Path, index: str | int = "best") -> dict:
    """One hall-of-fame entry with its provenance.

    Returns:
        ``{"expression", "rank", "chosen", "fitness", "test_perplexity", "canonical_key", "run_id",
        "run_dir", "grad_norm", "protocol", "config"}``.

    Raises:
        MetricError: Missing run directory, empty hall of fame, or an index out of range.
    """
    path = Path(run_dir)
    rank = parse_index(index, f"{path}: ")
    rows = hall_of_fame(path)
    if not rows:
        raise MetricError(f"{path} has no valid evaluated metric yet (empty hall of fame)")
    if rank > len(rows):
        raise MetricError(f"{path}: index {rank} is out of range; the hall of fame has {len(rows)} "
                          f"entr{'y' if len(rows) == 1 else 'ies'} (1..{len(rows)})")
    row = rows[rank - 1]
    config = _read_json(path / CONFIG) or {}
    final = _read_json(path / "final.json") or {}
    test = row.get("test_perplexity")
    if test is None:
        test = _number((final.get("test_perplexity") or {}).get(row["expression"]))
    return {"expression": row["expression"], "rank": rank, "chosen": row.get("chosen") == "*",
            "fitness": row.get("fitness"), "test_perplexity": test,
            "canonical_key": row.get("canonical_key", ""), "run_id": path.resolve().name, "run_dir": str(path),
            "grad_norm": config.get("grad_norm", "l2"), "protocol": run_protocol(config, final), "config": config}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _from_file(path: Path) -> tuple[object, dict]:
    """(tree or expression, provenance) from an exported JSON, a Pruner-Zero JSON or a native tree JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise MetricError(f"cannot read metric file {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise MetricError(f"metric file {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("expression"), str):  # ours (metric-search export)
        info = {k: data[k] for k in ("run_id", "rank", "fitness", "test_perplexity", "protocol") if k in data}
        return data["expression"], {**info, "grad_norm": data.get("grad_norm")}
    if isinstance(data, dict) and "data" in data:
        # ``*.tree.json`` uses our operator names; any other tree is Pruner-Zero's (their div = our divnorm)
        dialect = "native" if path.name.endswith(".tree.json") else "pruner-zero"
        try:
            return from_pz_json(data, dialect=dialect), {"format": f"tree JSON ({dialect})"}
        except ExpressionError as err:
            raise MetricError(f"metric file {path}: {err}") from None
    raise MetricError(f"metric file {path} is neither a metric-search export (no 'expression') "
                      f"nor a Pruner-Zero tree (no 'data')")


def resolve(ref: str) -> tuple[str, object, dict]:
    """Classify a reference: ``("baseline", name, {})``, ``("symbolic", tree_or_expression, provenance)``.

    Raises:
        MetricError: On anything that is not a baseline, run, file or valid expression.
    """
    text = str(ref).strip()
    if not text:
        raise MetricError("empty metric reference")
    if text in BASELINES:
        return "baseline", text, {}
    match = _RUN_REF.match(text)
    if match and ("(" not in text):  # expressions never hold ':'; the guard only sharpens the message
        entry = run_metric(match["path"], match["index"])
        return "symbolic", entry["expression"], _provenance(entry, text)
    path = Path(text)
    if path.is_dir():
        entry = run_metric(path, "best")
        return "symbolic", entry["expression"], _provenance(entry, f"{text}:best")
    if path.is_file():
        expression, info = _from_file(path)
        return "symbolic", expression, {**info, "source": text}
    try:
        return "symbolic", read_expression(text), {"source": "expression"}
    except ExpressionError as err:
        if text.endswith(".json") or ("/" in text and "(" not in text):
            raise MetricError(f"no metric file or run directory {text}") from None
        raise MetricError(f"cannot use metric {text!r}: {err}; give a baseline ({', '.join(BASELINES)}), "
                          f"runs/<id>:best|N, an exported .json or an expression") from None


def _provenance(entry: dict, source: str) -> dict:
    return {"source": source, "run_id": entry["run_id"], "rank": entry["rank"], "fitness": entry["fitness"],
            "test_perplexity": entry["test_perplexity"], "grad_norm": entry["grad_norm"],
            "protocol": entry["protocol"]}


def load_metric(ref, grad_norm: str | None = None, **options):
    """A pruner for any metric reference (see the module docstring); same interface as the baselines.

    Args:
        ref: A baseline name, ``runs/<id>:best`` / ``runs/<id>:N`` / ``runs/<id>``, a path to an exported
            ``.json`` (ours, Pruner-Zero's tree, or our native ``*.tree.json``), an expression string, a DEAP
            tree, or a ``Pruner`` (returned unchanged).
        grad_norm: ``"l1"``/``"l2"`` for ``G``; ``None`` means the one the metric was searched with (from the
            run's config or the export), else ``"l2"``.
        **options: Passed to a baseline's constructor (e.g. ``score=`` for BESA, ``ro=`` for Wanda++);
            options a baseline does not take are ignored, as in :func:`evaluators.get_pruner`.

    Returns:
        An :class:`evaluators.Pruner`: the baseline itself, or an :class:`evaluators.SymbolicPruner`.

    Raises:
        MetricError: One line naming the reference and what is wrong with it.
    """
    if isinstance(ref, Pruner):
        return ref
    if isinstance(ref, (str, Path)):
        kind, payload, info = resolve(str(ref))
    else:  # a DEAP tree
        kind, payload, info = "symbolic", ref, {"source": "tree"}
    if kind == "baseline":
        return get_pruner(payload, grad_norm=grad_norm, **options)
    searched = info.pop("grad_norm", None)
    try:
        pruner = SymbolicPruner(payload, grad_norm=grad_norm or searched or "l2", source=info.pop("source", None),
                                info={k: v for k, v in info.items() if v is not None})
    except ValueError as err:  # ExpressionError is a ValueError: a tree from a file that does not compile
        raise MetricError(f"cannot use metric {ref!s}: {err}") from None
    if searched and grad_norm and grad_norm != searched:
        pruner.info["searched_grad_norm"] = searched
    return pruner
