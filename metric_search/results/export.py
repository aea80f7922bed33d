"""``metric-search export``: write a run's metrics in every format a user may want.

For each exported hall-of-fame entry (``best`` → stem ``best``, rank N → stem ``rankN``), into
``runs/<id>/metrics/``:

* ``<stem>.json`` — ours: expression, infix, canonical and rank keys, SymPy and LaTeX forms, leaves,
  fitness with its protocol, test perplexity, run id, rank (:func:`metric_search.metrics.load_metric` reads it);
* ``<stem>.py`` — a standalone module defining ``score(W, X=None, G=None)`` in plain torch, generated from
  the tree; its operator helpers are the source of :mod:`primitives.ops_torch` (same guards, same EPS), so
  it returns the engine's scores bit for bit and imports nothing but torch;
* ``<stem>.sympy.txt`` — the SymPy expression (``str``), readable back with :func:`read_sympy`;
* ``<stem>.tex`` — LaTeX of the tree (operator templates) and of its simplified SymPy form;
* ``<stem>.pz.json`` — Pruner-Zero's JSON tree (their ``div`` is our ``divnorm``, ``pow`` our ``sqr``). A tree
  with our element-wise ``div`` has no Pruner-Zero spelling: it is written as ``<stem>.tree.json`` in our
  native dialect instead, and the JSON says so.
"""
from __future__ import annotations

import ast
import inspect
import json
import time
from pathlib import Path

import sympy as sp

from primitives import (LEAVES, OPERATORS, ExpressionError, canonical_key, leaf_symbol, leaves_used, parse, rank_key,
                        to_infix, to_latex, to_node, to_pz_json, to_string, to_sympy, tree_height, tree_size)
from primitives import ops_sympy as S
from primitives import ops_torch as T

from ..store import write_text_atomic
from .metrics import MetricError, hall_of_fame, parse_index, run_metric

FORMATS = ("json", "py", "sympy", "latex", "pz-json")


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"json,py"`` → ``("json", "py")``; ``"all"`` → every format.

    Raises:
        MetricError: On an unknown format.
    """
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["all"] or not items:
        return FORMATS
    aliases = {"tex": "latex", "pz": "pz-json", "pruner-zero": "pz-json", "python": "py"}
    out = tuple(dict.fromkeys(aliases.get(t, t) for t in items))
    bad = [t for t in out if t not in FORMATS]
    if bad:
        raise MetricError(f"unknown export format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    return out


# ------------------------------------------------------------------------- standalone torch code
def _helpers(op_names: list[str]) -> tuple[dict[str, float], list[str], list[str]]:
    """Constants, function sources and module imports of ``primitives.ops_torch`` that the operators need
    (transitively)."""
    namespace = vars(T)
    constants: dict[str, float] = {}
    functions: dict[str, object] = {}
    modules: dict[str, str] = {}
    todo = []
    for name in op_names:
        op = OPERATORS[name]
        if not op.builtin or getattr(op.torch_fn, "__module__", None) != T.__name__:
            raise MetricError(f"operator {name!r} is not built in; the standalone .py covers built-in operators only")
        todo.append(op.torch_fn)
    while todo:
        fn = todo.pop()
        if fn.__name__ in functions:
            continue
        functions[fn.__name__] = fn
        # ast Names (not attributes) in the body are the globals and locals it reads: module-level ones are
        # needed. Annotations are skipped: the generated module never evaluates them (postponed annotations).
        definition = ast.parse(inspect.getsource(fn)).body[0]
        for node in (n for stmt in definition.body for n in ast.walk(stmt)):
            ref = namespace.get(node.id) if isinstance(node, ast.Name) else None
            if inspect.isfunction(ref) and ref.__module__ == T.__name__:
                todo.append(ref)
            elif isinstance(ref, (int, float)) and not isinstance(ref, bool):
                constants[node.id] = ref
            elif inspect.ismodule(ref) and node.id != "torch":  # e.g. math
                modules[node.id] = ref.__name__
            elif ref is not None and not inspect.ismodule(ref):
                raise MetricError(f"operator helper {fn.__name__} reads {node.id!r}, which the standalone .py "
                                  "cannot reproduce")
    ordered = sorted(functions.values(), key=lambda f: f.__code__.co_firstlineno)
    imports = [f"import {m}" if m == alias else f"import {m} as {alias}" for alias, m in sorted(modules.items())]
    return constants, [inspect.getsource(f).rstrip() for f in ordered], imports


def _statements(tree) -> tuple[list[str], str, list[str]]:
    """SSA statements computing the tree, the name of the result, and the operators used (in order)."""
    lines: list[str] = []
    used: list[str] = []

    def emit(node) -> str:
        if node.kind == "leaf":
            return node.name
        if node.kind == "const":
            return f"_const({node.value!r}, ref)"
        op = OPERATORS[node.name]
        args = [emit(a) for a in node.args]
        if op.whole_matrix:  # like the compiler: whole-matrix reductions see the full (out, in) matrix
            args = [f"_full({a}, shape)" for a in args]
        if node.name not in used:
            used.append(node.name)
        name = f"t{len(lines) + 1}"
        lines.append(f"{name} = {op.torch_fn.__name__}({', '.join(args)})  # {node.name}")
        return name

    return lines, emit(to_node(tree)), used


_PREPARE = '''
def _const(value, ref):
    return torch.tensor(value, dtype=ref.dtype, device=ref.device)


def _full(t, shape):
    return t if t.shape == shape else t.expand(shape)


def _prepare(leaves):
    """Check the leaves, unify their dtype (float32/float64 kept, others → float32) and broadcast shape."""
    given = {k: v for k, v in leaves.items() if v is not None}
    missing = [k for k in LEAVES if k not in given]
    if missing:
        raise TypeError(f"{EXPRESSION} needs leaf tensor(s) {', '.join(missing)}")
    dtype = next(iter(given.values())).dtype
    if dtype not in (torch.float32, torch.float64) or any(t.dtype != dtype for t in given.values()):
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        given = {k: t.to(dtype) for k, t in given.items()}
    return given, torch.broadcast_shapes(*(t.shape for t in given.values()))
'''


def standalone_source(tree, info: dict | None = None) -> str:
    """Source of a module defining ``score(W, ...)`` for ``tree`` in plain torch (no project imports).

    Args:
        tree: A DEAP tree or expression string.
        info: Provenance printed in the module docstring (run id, rank, fitness).

    Raises:
        MetricError: If the tree uses a user-registered (non built-in) operator.
    """
    tree = parse(tree) if isinstance(tree, str) else tree
    lines, result, ops = _statements(tree)
    constants, sources, imports = _helpers(ops)
    used = leaves_used(tree)
    params = ["W"] + [f"{leaf}=None" for leaf in LEAVES if leaf in used and leaf != "W"]
    passed = ", ".join(f"{leaf!r}: {leaf}" for leaf in ["W"] + [x for x in used if x != "W"])
    facts = "".join(f"    {k}: {v}\n" for k, v in (info or {}).items() if v not in (None, ""))
    body = "\n".join(f"    {line}" for line in lines)
    if result in LEAVES:  # a bare leaf: return a copy, never the caller's tensor
        body = f"    {result}_ = {result}.clone()"
        result = f"{result}_"
    head = (f'"""Pruning metric {to_string(tree)} as plain torch (generated by `metric-search export`).\n\n'
            f"Infix: {to_infix(tree)}\nCanonical key: {canonical_key(tree)}\n{facts}\n"
            "Usage: ``score(W, X=..., G=...)`` returns scores of W's shape (higher = keep); prune the lowest\n"
            "scores within each output row. W is the Linear weight (out, in), X the per-input-channel\n"
            "activation norm (1, in), G the per-weight gradient norm (out, in). Every operator is total\n"
            "(finite in, finite out): the helpers below are copied from the engine's torch implementations.\n"
            '"""\n')
    parts = [head, "\n".join(["from __future__ import annotations\n"] + imports + ["import torch"]) + "\n",
             f"EXPRESSION = {to_string(tree)!r}", f"LEAVES = {tuple(used)!r}",
             f"NEEDS = {tuple(x for x in used if x != 'W')!r}  # statistics besides the weight"]
    parts += [f"{k} = {v!r}" for k, v in sorted(constants.items())]
    parts += ["\n"] + [s + "\n\n" for s in sources] + [_PREPARE.strip() + "\n\n"]
    parts.append(
        f"def score({', '.join(params)}, **_ignored):\n"
        f'    """Scores of shape W.shape for {to_string(tree)} (other keyword leaves are ignored)."""\n'
        f"    given, shape = _prepare({{{passed}}})\n"
        + "".join(f"    {leaf} = given[{leaf!r}]\n" for leaf in ["W"] + [x for x in used if x != "W"])
        + "    ref = next(iter(given.values()))\n"
        + body + "\n"
        + f"    out = {result}\n"
        + "    return out.expand(shape).contiguous() if out.shape != shape else out\n\n\n"
        "def score_from_stats(W, stats):\n"
        '    """The pruner interface: ``stats`` maps leaf names (X, G) to tensors."""\n'
        "    return score(W, **{k: stats[k] for k in NEEDS})\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------- the other formats
def sympy_locals() -> dict:
    """Names needed to read an exported SymPy string back (leaf symbols with their assumptions, whole-matrix ops)."""
    return {**{name: leaf_symbol(name) for name in LEAVES},
            "mms": S.mms, "zsn": S.zsn, "normalize": S.normalize, "rowrel": S.rowrel, "colrel": S.colrel, "fro": S.fro}


def read_sympy(text: str):
    """Parse the expression line of a ``.sympy.txt`` export (``#`` lines are comments) to SymPy."""
    line = next(ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    return sp.sympify(line.strip(), locals=sympy_locals())


def _texts(tree, stem: str, info: dict) -> dict[str, tuple[str, str]]:
    """{format: (file name, text)} for the non-JSON formats."""
    expr = to_sympy(tree)
    label = to_string(tree) + (f" (run {info['run_id']}, rank {info['rank']})" if info.get("run_id") else "")
    out = {
        "sympy": (f"{stem}.sympy.txt", f"# SymPy form of {label}; read with metric_search.export.read_sympy\n"
                                       f"{sp.sstr(expr)}\n"),
        "latex": (f"{stem}.tex", f"% {label}\n% tree form (operator templates):\n{to_latex(tree)}\n"
                                 f"% simplified SymPy form:\n% {sp.latex(expr)}\n"),
    }
    try:
        out["pz-json"] = (f"{stem}.pz.json", json.dumps(to_pz_json(tree), indent=2) + "\n")
    except ExpressionError:  # element-wise div has no Pruner-Zero name: keep the tree, in our names
        out["pz-json"] = (f"{stem}.tree.json", json.dumps(to_pz_json(tree, dialect="native"), indent=2) + "\n")
    return out


def metric_record(tree, entry: dict | None = None) -> dict:
    """Our JSON for a tree, with the provenance of a :func:`metric_search.metrics.run_metric` entry."""
    entry = entry or {}
    used = leaves_used(tree)
    return {
        "format": "metric-search/metric-v1", "expression": to_string(tree), "infix": to_infix(tree),
        "canonical_key": canonical_key(tree), "rank_key": rank_key(tree), "sympy": sp.sstr(to_sympy(tree)),
        "latex": to_latex(tree), "leaves": list(used), "needs": [x for x in used if x != "W"],
        "size": tree_size(tree), "height": tree_height(tree), "grad_norm": entry.get("grad_norm", "l2"),
        "fitness": entry.get("fitness"), "fitness_kind": "perplexity (lower is better), see protocol.fitness",
        "test_perplexity": entry.get("test_perplexity"), "rank": entry.get("rank"), "chosen": entry.get("chosen"),
        "run_id": entry.get("run_id"), "run_dir": entry.get("run_dir"), "protocol": entry.get("protocol", {}),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def export_metric(tree, out_dir: str | Path, stem: str, formats=FORMATS, entry: dict | None = None) -> dict:
    """Write ``tree`` in ``formats`` as ``out_dir/<stem>.*``.

    Returns:
        ``{"files": {format: Path}, "skipped": {format: reason}}``.
    """
    tree = parse(tree) if isinstance(tree, str) else tree
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = metric_record(tree, entry)
    info = {k: record[k] for k in ("run_id", "rank", "fitness", "test_perplexity")}
    texts = _texts(tree, stem, info)
    files, skipped = {}, {}
    for fmt in parse_formats(list(formats)):
        if fmt == "json":
            continue  # written last, listing the other files
        if fmt == "py":
            try:
                name, text = f"{stem}.py", standalone_source(tree, info)
            except MetricError as err:
                skipped[fmt] = str(err)
                continue
        else:
            name, text = texts[fmt]
        write_text_atomic(out / name, text)
        files[fmt] = out / name
    if "pz-json" in files and files["pz-json"].name.endswith(".tree.json"):
        record["pz_json_dialect"] = "native (element-wise div has no Pruner-Zero name)"
    if "json" in parse_formats(list(formats)):
        record["files"] = {k: v.name for k, v in files.items()}
        write_text_atomic(out / f"{stem}.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
        files = {"json": out / f"{stem}.json", **files}
    return {"files": files, "skipped": skipped}


def export_run(run_dir: str | Path, index: str | int = "best", formats=FORMATS,
               out_dir: str | Path | None = None) -> dict[str, dict]:
    """Export hall-of-fame entries of a run.

    Args:
        run_dir: ``runs/<id>``.
        index: ``"best"``, a rank ``N`` (1-based), ``"all"``, or a comma list such as ``"1,3"``.
        formats: Names from :data:`FORMATS` (a list or a comma string).
        out_dir: Where to write (default ``runs/<id>/metrics``).

    Returns:
        ``{stem: {"files": {format: Path}, "skipped": {format: reason}, "expression": str}}``.

    Raises:
        MetricError: Bad run directory, index or format.
    """
    formats = parse_formats(formats)
    run_dir = Path(run_dir)
    text = str(index).strip().lower()
    if text == "all":
        wanted = [(f"rank{r['rank']}", r["rank"]) for r in hall_of_fame(run_dir)]
        if not wanted:
            raise MetricError(f"{run_dir} has no valid evaluated metric yet (empty hall of fame)")
    else:
        wanted = [("best" if p.strip().lower() == "best" else f"rank{parse_index(p)}", p.strip())
                  for p in text.split(",") if p.strip()]
    entries = [(stem, run_metric(run_dir, idx)) for stem, idx in wanted]  # all checked before any write
    out = Path(out_dir) if out_dir else run_dir / "metrics"
    results = {}
    for stem, entry in entries:
        try:
            tree = parse(entry["expression"])
        except ExpressionError as err:
            raise MetricError(f"{run_dir} rank {entry['rank']}: {err}") from None
        results[stem] = {**export_metric(tree, out, stem, formats, entry), "expression": entry["expression"]}
    return results
