"""The house rules that can be checked: imports point down the layers with no circles, files stay short."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["primitives", "evaluators", "metric_search"]  # each may import only from itself and the ones before
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the three packages (subpackages included) by dotted name; ``pkg.__init__`` for packages."""
    found = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (module level or inside functions)."""
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, up level - 1 packages
                parts = name.split(".")[:-node.level]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for candidate in [base, f"{base}.__init__"] + [f"{base}.{alias.name}" for alias in node.names]:
                if candidate in known:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    found.discard(name)
    return found


def test_imports_point_down_the_layers():
    for name, path in modules().items():
        rank = LAYERS.index(name.split(".")[0])
        for target in imports_of(name, path):
            assert LAYERS.index(target.split(".")[0]) <= rank, f"{name} imports {target}, a layer above it"


def test_no_import_circles():
    # a package's __init__ re-exports its modules; importing a sibling through it is not a circle of files
    graph = {name: {t for t in imports_of(name, path) if not t.endswith("__init__")} for name, path in modules().items()}
    state: dict[str, str] = {}
    circles = []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" → ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(circles)


@pytest.mark.parametrize("folder", LAYERS + ["benchmarks", "tests"])
def test_files_stay_short(folder):
    long = {p.name: n for p in (ROOT / folder).rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_config_key_groups_name_real_fields():
    from metric_search import config

    fields = set(config.FIELDS)
    for group in ("PROBLEM_KEYS", "RIVAL_KEYS", "RACE_KEYS", "GATE_KEYS", "COMPARED_KEYS", "LEGACY_DEFAULTS"):
        assert set(getattr(config, group)) <= fields, f"{group} names keys SearchConfig does not have"


def test_the_search_loop_never_imports_the_run_tools():
    loop = [name for name in modules() if name.startswith("metric_search.") and ".results" not in name
            and name != "metric_search.cli"]
    for name in loop:
        tools = {t for t in imports_of(name, modules()[name]) if t.startswith("metric_search.results")}
        assert not tools, f"{name} imports {tools}: the loop must run without the tools that read runs"


def test_function_level_imports_say_why():
    """An import inside a function is an optional dependency or a heavy one deferred on purpose, and says so
    in a comment on its line or on the line above its group of imports."""
    silent = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    row = node.lineno - 1
                    while row > 0 and lines[row - 1].strip().startswith(("from ", "import ")):
                        row -= 1  # the first import of a contiguous group
                    said = "#" in lines[node.lineno - 1] or lines[row - 1].strip().startswith("#")
                    if not said:
                        silent.append(f"{name}:{node.lineno}")
    assert not silent, f"function-level imports without a comment saying why: {silent}"
