"""The method table: every baseline pruner by its CLI name, and ``get_pruner`` to build one with options.

It imports the methods (the score pruners and the block-wise ones); none of them imports it.
"""
from __future__ import annotations

import inspect
from typing import Callable

from .besa import BESA
from .pruners import GBLM, RIA, Magnitude, Pruner, PrunerZero, Wanda
from .regional import wanda_plus_plus
from .sparsegpt import SparseGPT

BASELINES: dict[str, Callable[..., Pruner]] = {
    "magnitude": Magnitude,
    "wanda": Wanda,
    "gblm": GBLM,
    "pruner-zero": PrunerZero,
    "ria": RIA,
    "wanda++": wanda_plus_plus,
    "sparsegpt": SparseGPT,
    "besa": BESA,
}


class MethodError(ValueError):
    """An unknown method name, or an option value the method rejects; one line for the user."""


def get_pruner(name: str, **options) -> Pruner:
    """A baseline pruner by its CLI name, given the options it accepts.

    Options a method does not take (say ``grad_norm`` for ``wanda``) are ignored, so a caller can pass
    every option it has; ``None`` values mean "the method's default". A value the method rejects raises
    ``MethodError``.
    """
    if name not in BASELINES:
        raise MethodError(f"unknown method {name!r}; choose from {', '.join(BASELINES)}")
    factory = BASELINES[name]
    accepted = inspect.signature(factory).parameters
    try:
        return factory(**{k: v for k, v in options.items() if k in accepted and v is not None})
    except ValueError as err:  # an option value the method rejects (say ria's a < 0)
        raise MethodError(f"{name}: {err}") from None
