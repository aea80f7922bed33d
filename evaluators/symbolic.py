"""A pruner built from a symbolic metric (an expression over the leaves W, X, G), e.g. a discovered one.

    pruner = SymbolicPruner("mul(abs(W), X)")           # Wanda, as an expression
    pruner.needs                                        # ('X',)
    report = pruner.prune(model, calibration, sparsity=0.5)

The score is the compiled tree of :mod:`primitives` (the same total, guarded torch code the search
evaluated), so a metric prunes exactly as it did during the search.
"""
from __future__ import annotations

from deap import gp

from primitives import canonical_key, compile_tree, leaves_used, parse, rank_key, to_string

from .pruners import Pruner


class SymbolicPruner(Pruner):
    """A pruner whose score is a symbolic expression over the registered leaves.

    Args:
        expression: An expression string (functional or infix, see :func:`primitives.parse`) or a DEAP tree.
        name: Name in reports and ``pruning.json`` (default: the expression's functional string).
        grad_norm: How ``G`` is accumulated, ``"l2"`` (default) or ``"l1"``; use the value the metric was
            searched with (a run's config says it).
        source: Where the metric came from (``runs/<id>:best``, a file), kept for provenance.
        info: Extra provenance (fitness, protocol, run id), copied into :meth:`describe`.

    Attributes:
        tree: The parsed ``gp.PrimitiveTree``.
        expression: Its functional string, e.g. ``"mul(abs(W), X)"``.
        needs: Statistics the score reads: every leaf used except ``W`` (``W`` is the weight itself).
        compiled: The compiled tree; called with keyword leaves.

    Raises:
        primitives.ExpressionError: If the expression cannot be parsed.
        ValueError: On a bad ``grad_norm``.
    """

    def __init__(self, expression: str | gp.PrimitiveTree, name: str | None = None, grad_norm: str = "l2",
                 source: str | None = None, info: dict | None = None):
        if grad_norm not in ("l1", "l2"):
            raise ValueError(f"grad_norm must be l1 or l2, got {grad_norm!r}")
        self.tree = parse(expression) if isinstance(expression, str) else expression
        self.expression = to_string(self.tree)
        self.compiled = compile_tree(self.tree)
        self.needs = tuple(leaf for leaf in leaves_used(self.tree) if leaf != "W")
        self.name = name or self.expression
        self.grad_norm = grad_norm
        self.source = source
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return f"SymbolicPruner({self.expression!r})"

    def score(self, W, stats):
        """Scores of shape ``W.shape`` (higher = keep), finite for finite inputs.

        Only ``W`` and the leaves in ``needs`` are passed on, so unrelated statistics in ``stats`` cannot
        change the broadcast shape or dtype of the result.
        """
        missing = [leaf for leaf in self.needs if leaf not in stats]
        if missing:
            have = ", ".join(stats) or "none"
            raise ValueError(f"{self.name}: statistics {', '.join(missing)} missing (have {have})")
        return self.compiled(**{"W": W, **{leaf: stats[leaf] for leaf in self.needs}})

    def describe(self) -> dict:
        """Name, needs, expression and keys, plus provenance; goes into ``pruning.json``."""
        out = {**super().describe(), "kind": "symbolic", "expression": self.expression,
               "canonical_key": canonical_key(self.tree), "rank_key": rank_key(self.tree),
               "grad_norm": self.grad_norm}
        if self.source:
            out["source"] = self.source
        return {**out, **{k: v for k, v in self.info.items() if k not in out}}
