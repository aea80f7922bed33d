"""Formatting shared by the tools that read finished runs (analysis, report, compare, reevaluate): markdown
tables, p-values in words, and the X/G groups of a metric."""
from __future__ import annotations

GROUPS = ("neither X nor G", "X only", "G only", "X and G")


def gx_group(leaves: set) -> str:
    """Which of the statistics ``X`` and ``G`` a metric's leaves use, as one of ``GROUPS``."""
    return GROUPS[("X" in leaves) + 2 * ("G" in leaves)]


def p_text(p: float) -> str:
    """A p-value for a sentence: ``p < 0.001``, ``p = 0.042`` or ``p n/a``."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p == p else "p n/a"


def cell(value, digits: int = 4) -> str:
    """A table cell: ``–`` for nothing, ``n/a`` for NaN, 4 significant digits, scientific when far from 1."""
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.2e}"
    return str(value)


def p_cell(p: float) -> str:
    """A p-value for a table cell."""
    return "n/a" if p != p else "<0.001" if p < 0.001 else f"{p:.3f}"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table; ``columns`` are (key, header); ``|`` inside cells is escaped."""
    if not rows:
        return "_(none)_\n"
    head = "| " + " | ".join(h for _, h in columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(
        (p_cell(r[k]) if k.endswith("_p") or k in ("holm_p", "p") else cell(r.get(k))).replace("|", "\\|")
        for k, _ in columns) + " |\n" for r in rows)
    return head + body
