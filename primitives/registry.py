"""The search space's vocabulary: leaves and operators, each registered once and used everywhere.

A registered operator is immediately available to :func:`primitives.make_primitive_set` (DEAP),
:func:`primitives.parse`, :func:`primitives.to_sympy` / :func:`primitives.from_sympy`,
:func:`primitives.compile_tree`, the simplifier (through its properties) and
:func:`primitives.operator_table`.

**Totality.** Every torch implementation maps finite inputs to finite outputs. The built-in operators are
total by construction (the guards are listed per operator in :func:`primitives.operator_table`):

* ``EPS = 1e-30`` floors magnitudes where a zero would be fatal: ``log(x) = log(max(|x|, EPS))``,
  ``div(x, y) = x / (sign(y) * max(|y|, EPS))`` (a zero denominator counts as positive) and the norm in
  ``divnorm``. EPS is far below the magnitude of any real weight, activation norm or gradient norm, so the
  guards only act on exact zeros and on values that are zero for all practical purposes.
* ``exp`` clamps its input at ``EXP_MAX = 88`` (``exp(88) ≈ 1.65e38`` < float32 max).
* ``sqr``, ``add``, ``sub``, ``mul``, ``div`` and ``divnorm`` map an overflow (±inf) to ±``finfo.max`` of
  the dtype (``Tensor.nan_to_num_``); they never produce NaN from finite inputs.
* ``mms``, ``zsn`` and ``normalize`` rescale internally so that no intermediate overflows, and map a constant
  tensor to zeros (``normalize`` of an all-zero tensor is zeros); ``rowrel`` and ``colrel`` rescale a row
  (column) whose max|x| is outside [1e-12, 1e12] and map an all-zero row (column) to zeros.
* A user operator registered with ``guard=True`` (the default) gets the same treatment applied to its
  output: NaN → 0, ±inf → ±max.

**SymPy twins** are exact for real arithmetic and ignore the guards: they treat ``EPS`` as 0, the ``exp``
clamp as absent and overflow as impossible. Two trees whose twins are equal therefore compute the same
function except where a guard acts (a ``log`` or ``div`` argument below 1e-30 in magnitude, an ``exp``
argument above 88, a result beyond float32 range) and up to float rounding.
"""
from __future__ import annotations

import keyword
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

EPS = 1e-30
EXP_MAX = 88.0

_version = 0


def registry_version() -> int:
    """A counter that changes whenever a leaf or operator is registered (for caches)."""
    return _version


def _bump() -> None:
    global _version
    _version += 1


@dataclass(frozen=True)
class Leaf:
    """A terminal of the search space: one statistic of a Linear layer.

    Attributes:
        name: The symbol used in expressions (``W``, ``X``, ``G``).
        description: What the tensor holds, including its shape.
        nonnegative: Whether every entry is ``>= 0`` (the SymPy symbol gets ``nonnegative=True`` and the
            simplifier may drop ``abs`` around it).
        shape: The documented shape, e.g. ``"(out, in)"`` or ``"(1, in)"``; leaves broadcast against each other.
    """

    name: str
    description: str
    nonnegative: bool = True
    shape: str = "(out, in)"


@dataclass(frozen=True)
class Operator:
    """One registry entry. Boolean properties default to ``False``; the simplifier relies on them.

    Attributes:
        name: Name in expressions, DEAP trees and JSON trees.
        arity: 1 or 2.
        torch_fn: Total torch implementation (finite in, finite out), element-wise with broadcasting unless
            ``whole_matrix``.
        sympy_fn: The SymPy twin, called with ``arity`` SymPy expressions.
        latex: ``str.format`` template for a LaTeX rendering, ``{0}``/``{1}`` being the rendered arguments.
        torch_doc: The exact torch definition, guards included (shown by :func:`operator_table`).
        description: One line for humans.
        increasing: Strictly increasing on all reals (unary).
        increasing_nonneg: Strictly increasing on ``x >= 0`` (unary).
        decreasing: Strictly decreasing on all reals (unary).
        nonnegative: The output is ``>= 0`` for every input.
        preserves_nonneg: The output is ``>= 0`` whenever every input is.
        even: ``f(-x) == f(x) == f(|x|)`` exactly (bit for bit) in torch.
        idempotent: ``f(f(x)) == f(x)`` (in real arithmetic; bit-exact only for ``abs``).
        inverse_of: Name of ``g`` such that ``f(g(x))`` is ``x`` (or ``|x|``, see ``inverse_gives``).
        inverse_gives: ``"x"`` or ``"abs"``: what ``f(g(x))`` simplifies to.
        exact_inverse: The cancellation ``f(g(x))`` is bit-exact in torch for every finite input.
        self_value: For binary ops, the value of ``f(x, x)`` (``sub`` → 0, ``div`` → 1), else ``None``.
        exact_self: ``f(x, x) == self_value`` bit-exactly for every finite ``x``.
        commutative: ``f(x, y) == f(y, x)``.
        increasing_in_row: Preserves the order within each row, not across rows (a positive scaling per row,
            as ``rowrel``): the rank key strips it at the root, because masks compare scores within a row.
        whole_matrix: Reduces over the (out, in) matrix, all of it or its rows or columns (leaves are
            broadcast to it first).
        infix: Infix symbol (``+ - * /``) accepted by the parser and used by :func:`to_infix`.
        precedence: Binding strength of ``infix`` (higher binds tighter).
        builtin: Registered by this package.
    """

    name: str
    arity: int
    torch_fn: Callable[..., torch.Tensor]
    sympy_fn: Callable
    latex: str = ""
    torch_doc: str = ""
    description: str = ""
    increasing: bool = False
    increasing_nonneg: bool = False
    decreasing: bool = False
    nonnegative: bool = False
    preserves_nonneg: bool = False
    even: bool = False
    idempotent: bool = False
    inverse_of: str | None = None
    inverse_gives: str = "x"
    exact_inverse: bool = False
    self_value: float | None = None
    exact_self: bool = False
    commutative: bool = False
    increasing_in_row: bool = False
    whole_matrix: bool = False
    infix: str | None = None
    precedence: int = 0
    builtin: bool = field(default=False, compare=False)

    @property
    def properties(self) -> list[str]:
        """The properties that are set, as short human-readable strings (for tables)."""
        out = [f.name for f in fields(self)
               if f.type in ("bool", bool) and f.name != "builtin" and getattr(self, f.name)]
        if self.inverse_of:
            gives = "x" if self.inverse_gives == "x" else "|x|"
            exact = "exact" if self.exact_inverse else "up to rounding/guards"
            out.append(f"{self.name}({self.inverse_of}(x)) = {gives} ({exact})")
        if self.self_value is not None:
            exact = "exact" if self.exact_self else "not at |x| < EPS"
            out.append(f"{self.name}(x, x) = {self.self_value:g} ({exact})")
        if self.infix:
            out.append(f"infix '{self.infix}'")
        return [p for p in out if p not in ("exact_inverse", "exact_self")]


#: Registered leaves by name, in registration order (the order of positional arguments of compiled trees).
LEAVES: dict[str, Leaf] = {}
#: Registered operators by name, in registration order.
OPERATORS: dict[str, Operator] = {}

_PROPERTY_NAMES = {f.name for f in fields(Operator)} - {"name", "arity", "torch_fn", "sympy_fn", "builtin"}


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{what} name must be a Python identifier, got {name!r}")


def register_leaf(name: str, description: str, nonnegative: bool = True, shape: str = "(out, in)",
                  overwrite: bool = False) -> Leaf:
    """Add a leaf (a per-Linear statistic) to the search space.

    Args:
        name: Symbol used in expressions, e.g. ``"R"``.
        description: What the tensor holds.
        nonnegative: Whether all entries are ``>= 0``.
        shape: Documented shape; must broadcast against ``(out, in)``.
        overwrite: Allow replacing an existing leaf of that name.

    Returns:
        The registered :class:`Leaf`.

    Raises:
        ValueError: On a bad or already used name.
    """
    _check_name(name, "leaf")
    if name in OPERATORS:
        raise ValueError(f"{name!r} is already an operator name")
    if name in LEAVES and not overwrite:
        raise ValueError(f"leaf {name!r} is already registered (pass overwrite=True to replace it)")
    leaf = Leaf(name, description, bool(nonnegative), shape)
    LEAVES[name] = leaf
    _bump()
    return leaf


def _guarded(fn: Callable[..., torch.Tensor], name: str) -> Callable[..., torch.Tensor]:
    """Wrap a user torch function so that its output is always finite (NaN → 0, ±inf → ±max)."""

    def guarded(*args: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(fn(*args))

    guarded.__name__ = name
    guarded.__doc__ = fn.__doc__
    guarded.allocates = True  # nan_to_num returns a new tensor, so the compiler may reuse it in place
    return guarded


def register_operator(name: str, arity: int, torch_fn: Callable[..., torch.Tensor], sympy_fn: Callable, *,
                      guard: bool = True, overwrite: bool = False, **properties) -> Operator:
    """Register an operator so that trees, parsing, SymPy, compilation and simplification all know it.

    Args:
        name: Operator name (a Python identifier, not a leaf name).
        arity: 1 or 2.
        torch_fn: Torch implementation, called with ``arity`` float tensors that broadcast together.
        sympy_fn: SymPy twin, called with ``arity`` SymPy expressions. An opaque ``sympy.Function`` class
            (``sympy.Function("myop")``) is fine: the canonical key then treats the operator as a black box.
        guard: Wrap ``torch_fn`` so that its output is finite (NaN → 0, ±inf → ±max of the dtype). Keep it on
            unless ``torch_fn`` is total already.
        overwrite: Allow replacing an existing operator of that name.
        **properties: Any :class:`Operator` field other than name/arity/functions, e.g.
            ``increasing=True``, ``nonnegative=True``, ``latex=r"\\operatorname{{myop}}\\left({0}\\right)"``,
            ``torch_doc="..."``, ``description="..."``.

    Returns:
        The registered :class:`Operator`.

    Raises:
        ValueError: On a bad name or arity, or a name already in use.
        TypeError: On an unknown property.
    """
    _check_name(name, "operator")
    if arity not in (1, 2):
        raise ValueError(f"operator arity must be 1 or 2, got {arity!r}")
    if name in LEAVES:
        raise ValueError(f"{name!r} is already a leaf name")
    if name in OPERATORS and not overwrite:
        raise ValueError(f"operator {name!r} is already registered (pass overwrite=True to replace it)")
    unknown = set(properties) - _PROPERTY_NAMES
    if unknown:
        raise TypeError(f"unknown operator properties {sorted(unknown)}; known: {sorted(_PROPERTY_NAMES)}")
    if guard:
        torch_fn = _guarded(torch_fn, name)
    if not properties.get("torch_doc"):
        doc = (getattr(torch_fn, "__doc__", None) or "").strip().splitlines()
        properties["torch_doc"] = (doc[0] if doc else f"user function {name}") + (
            " (output guarded: NaN → 0, ±inf → ±max)" if guard else "")
    if not properties.get("latex"):
        args = ", ".join("{%d}" % i for i in range(arity))
        properties["latex"] = r"\operatorname{{%s}}\left(%s\right)" % (name.replace("_", r"\_"), args)
    op = Operator(name=name, arity=arity, torch_fn=torch_fn, sympy_fn=sympy_fn, **properties)
    OPERATORS[name] = op
    _bump()
    return op


def _register_builtin(name: str, arity: int, torch_fn, sympy_fn, **properties) -> Operator:
    op = register_operator(name, arity, torch_fn, sympy_fn, guard=False, **properties)
    object.__setattr__(op, "builtin", True)  # frozen dataclass; builtin is not user-settable on purpose
    return op
