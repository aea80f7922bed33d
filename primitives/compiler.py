"""Compile a tree into a torch callable by composing closures over its nodes (no ``eval``/``exec``)."""
from __future__ import annotations

from typing import Callable

import torch
from deap import gp

from . import ops_torch as T
from .errors import ExpressionError
from .registry import LEAVES, OPERATORS
from .nodes import Node, to_node
from .trees import TreeLike, as_tree, node_string

_Env = list  # [leaf tensors by slot..., reference tensor, full shape]
_Fn = Callable[[_Env], "tuple[torch.Tensor, bool]"]  # returns (tensor, owned by the compiled tree)


def _build(node: Node, slots: dict[str, int], ref: int, shape: int) -> _Fn:
    """A closure computing ``node``; it also says whether the tensor is a temporary that may be overwritten.

    Temporaries of built-in operators are reused in place (their in-place twins are bit-identical), which
    saves an allocation per node; leaves are never written to.
    """
    if node.kind == "leaf":
        i = slots[node.name]
        return lambda env: (env[i], False)
    if node.kind == "const":
        value = float(node.value)
        return lambda env: (torch.tensor(value, dtype=env[ref].dtype, device=env[ref].device), True)
    op = OPERATORS[node.name]
    fn = op.torch_fn
    owned = op.builtin or getattr(fn, "allocates", False)
    kids = [_build(a, slots, ref, shape) for a in node.args]
    if op.whole_matrix:
        # Whole-matrix reductions see the (out, in) matrix: X (1, in) and constants are broadcast first.
        def full(t: torch.Tensor, env: _Env) -> torch.Tensor:
            return t if t.shape == env[shape] else t.expand(env[shape])
        if op.arity == 1:
            (a,) = kids
            return lambda env: (fn(full(a(env)[0], env)), owned)
        a, b = kids
        return lambda env: (fn(full(a(env)[0], env), full(b(env)[0], env)), owned)
    if op.arity == 1:
        (a,) = kids
        inplace = T.INPLACE_UNARY.get(fn) if op.builtin else None
        if inplace is None:
            return lambda env: (fn(a(env)[0]), owned)

        def unary(env: _Env) -> tuple[torch.Tensor, bool]:
            t, own = a(env)
            return (inplace(t), True) if own else (fn(t), True)
        return unary
    a, b = kids
    out_fn = T.BINARY_OUT.get(fn) if op.builtin else None
    if out_fn is None:
        return lambda env: (fn(a(env)[0], b(env)[0]), owned)
    is_div = fn is T.div

    def binary(env: _Env) -> tuple[torch.Tensor, bool]:
        x, ox = a(env)
        y, oy = b(env)
        if is_div:
            y, oy = T.div_denominator(y), True
        full = env[shape]
        if ox and x.shape == full:  # the result has the full shape, so it fits in x
            return out_fn(x, y, out=x).nan_to_num_(), True
        if oy and y.shape == full:
            return out_fn(x, y, out=y).nan_to_num_(), True
        return out_fn(x, y).nan_to_num_(), True
    return binary


class CompiledTree:
    """A tree as a torch function ``f(W, X, G) -> scores``.

    Leaves are passed positionally in the primitive set's leaf order or by name; only the leaves in
    ``self.leaves`` are required, other registered leaves and unknown keywords are accepted and ignored
    (so ``f(**stats)`` works). The result has the broadcast shape of all passed leaf tensors, i.e. (out, in)
    as soon as ``W`` or ``G`` is passed, is a fresh tensor (never a view of an input) and is finite for
    finite inputs. float32 and float64 inputs are computed in their dtype; other dtypes are computed in
    float32 and the result stays float32.

    Attributes:
        expression: The tree's functional string.
        leaves: Names of the leaves the tree reads.
        arg_names: Positional parameter names.
    """

    def __init__(self, tree: TreeLike, pset: gp.PrimitiveSet | None = None):
        tree = as_tree(tree, pset)
        node = to_node(tree)
        self.expression = node_string(node)
        self.arg_names = tuple(pset.leaves if pset is not None and hasattr(pset, "leaves") else LEAVES)
        used = {n.value for n in tree if not isinstance(n, gp.Primitive) and isinstance(n.value, str)}
        self.leaves = tuple(name for name in LEAVES if name in used)
        self._slots = {name: i for i, name in enumerate(self.leaves)}
        self._ref, self._shape = len(self.leaves), len(self.leaves) + 1
        self._fn = _build(node, self._slots, self._ref, self._shape)

    def __repr__(self) -> str:
        return f"CompiledTree({self.expression!r})"

    def __call__(self, *args: torch.Tensor | None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        if len(args) > len(self.arg_names):
            raise TypeError(f"{self.expression}: at most {len(self.arg_names)} positional leaves "
                            f"({', '.join(self.arg_names)}), got {len(args)}")
        given = {name: t for name, t in kwargs.items() if t is not None and name in LEAVES}
        for name, t in zip(self.arg_names, args):
            if t is not None:
                if name in kwargs and kwargs[name] is not None:
                    raise TypeError(f"leaf {name!r} passed twice")
                given[name] = t
        missing = [name for name in self.leaves if name not in given]
        if missing:
            raise TypeError(f"{self.expression} needs leaf tensor(s) {', '.join(missing)}")
        if not given:
            raise TypeError(f"{self.expression}: pass at least one leaf tensor to fix the output shape")
        tensors = list(given.values())
        dtype = tensors[0].dtype
        if dtype not in (torch.float32, torch.float64) or any(t.dtype != dtype for t in tensors):
            dtype = torch.float32 if dtype not in (torch.float32, torch.float64) else dtype
            given = {k: t.to(dtype) for k, t in given.items()}
            tensors = list(given.values())
        try:
            shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        except RuntimeError as err:
            raise ValueError(f"leaf shapes do not broadcast: "
                             f"{ {k: tuple(t.shape) for k, t in given.items()} }") from err
        env = [given[name] for name in self.leaves] + [tensors[0], shape]
        out, owned = self._fn(env)
        if out.shape != shape:
            return out.expand(shape).contiguous()  # a new tensor: expand is a view, contiguous copies it
        return out if owned else out.clone()


def compile_tree(tree: TreeLike, pset: gp.PrimitiveSet | None = None) -> CompiledTree:
    """Compile a tree (or expression string) into a torch callable; see :class:`CompiledTree`.

    Raises:
        ExpressionError: If the tree holds an unregistered operator or an unknown terminal.
    """
    try:
        return CompiledTree(tree, pset)
    except ExpressionError:
        raise
    except (KeyError, AttributeError) as err:
        raise ExpressionError(f"cannot compile tree: {err}") from None
