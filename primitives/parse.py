"""Safe parsing of metric expressions (never ``eval``): functional ``mul(abs(W), X)`` and infix ``abs(W) * X``.

Grammar (both forms mix freely)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" NUMBER | "-" unary | "+" unary | primary
    primary := NUMBER | LEAF | OP "(" expr ("," expr)* ")" | "(" expr ")"

``+ - * /`` map to the operators registered with that ``infix`` symbol (``add sub mul div``), unary minus to
``neg`` (a minus directly before a number makes a negative constant instead). Numbers are decimal literals
(``2``, ``0.5``, ``1e-3``) and become constant terminals.
"""
from __future__ import annotations

import re

from deap import gp

from .errors import ExpressionError
from .registry import LEAVES, OPERATORS
from .nodes import Node, default_pset, from_node

_TOKEN = re.compile(r"(?P<ws>\s+)|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)"
                    r"|(?P<punct>\*\*|[(),+\-*/])")  # ``**`` only in SymPy's printed form (sympy_form.py)


def _tokenize(expr: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise _error(expr, f"unexpected character {expr[pos]!r}", pos)
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group(), pos))
        pos = m.end()
    tokens.append(("end", "", len(expr)))
    return tokens


def _error(expr: str, message: str, pos: int) -> ExpressionError:
    if len(expr) <= 80:
        shown = expr
    else:
        start, end = max(0, pos - 30), pos + 30
        shown = ("…" if start else "") + expr[start:end] + ("…" if end < len(expr) else "")
    return ExpressionError(f"{message} at position {pos} in {shown!r}", pos)


class _Parser:
    def __init__(self, expr: str, pset: gp.PrimitiveSet):
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.i = 0
        self.ops = set(getattr(pset, "op_names", None) or
                       [n for n, p in pset.mapping.items() if isinstance(p, gp.Primitive)])
        self.leaves = set(pset.arguments)
        self.infix = {op.infix: op for op in OPERATORS.values() if op.infix and op.arity == 2}

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, message: str, pos: int) -> ExpressionError:
        return _error(self.expr, message, pos)

    def need_op(self, name: str, pos: int, shown: str | None = None) -> None:
        if name not in self.ops:
            what = f"operator {name!r}" + (f" (for {shown!r})" if shown else "")
            raise self.fail(f"{what} is not in this primitive set", pos)

    def parse(self) -> Node:
        kind, text, pos = self.peek()
        if kind == "end":
            raise self.fail("empty expression", pos)
        node = self.binary(1)
        kind, text, pos = self.peek()
        if kind != "end":
            if text == ")":
                raise self.fail("unbalanced parenthesis: unexpected ')'", pos)
            raise self.fail(f"unexpected {text!r} after a complete expression", pos)
        return node

    def binary(self, min_prec: int) -> Node:
        left = self.unary()
        while True:
            kind, text, pos = self.peek()
            op = self.infix.get(text) if kind == "punct" else None
            if op is None or op.precedence < min_prec:
                return left
            self.take()
            self.need_op(op.name, pos, text)
            right = self.binary(op.precedence + 1)  # left-associative
            left = Node.op(op.name, left, right)

    def unary(self) -> Node:
        kind, text, pos = self.peek()
        if text == "+" and kind == "punct":
            self.take()
            return self.unary()
        if text == "-" and kind == "punct":
            self.take()
            if self.peek()[0] == "num":
                return self.number(self.take(), negative=True)
            operand = self.unary()
            self.need_op("neg", pos, "unary -")
            return Node.op("neg", operand)
        return self.primary()

    def number(self, tok, negative: bool = False) -> Node:
        _, text, pos = tok
        is_int = not any(c in text for c in ".eE")
        try:
            value = int(text) if is_int else float(text)
            return Node.const(-value if negative else value)
        except (ExpressionError, ValueError) as err:  # ValueError: Python's limit on int digits
            raise self.fail(str(err).split(" at position")[0], pos) from None

    def primary(self) -> Node:
        kind, text, pos = self.take()
        if kind == "num":
            return self.number((kind, text, pos))
        if kind == "name":
            if self.peek()[1] == "(":
                return self.call(text, pos)
            if text in self.leaves:
                return Node.leaf(text)
            if text in OPERATORS:
                arity = OPERATORS[text].arity
                raise self.fail(f"operator {text!r} needs {arity} argument{'s' * (arity > 1)} in parentheses",
                                pos)
            if text in LEAVES:
                raise self.fail(f"leaf {text!r} is not in this primitive set", pos)
            raise self.fail(f"unknown name {text!r}", pos)
        if text == "(":
            node = self.binary(1)
            close = self.take()
            if close[1] != ")":
                if close[0] == "end":
                    raise self.fail("unbalanced parenthesis: '(' is never closed", pos)
                raise self.fail(f"expected ')' but found {close[1]!r}", close[2])
            return node
        if kind == "end":
            raise self.fail("unexpected end of expression", pos)
        if text == ")":
            raise self.fail("unbalanced parenthesis: unexpected ')'", pos)
        raise self.fail(f"unexpected {text!r}", pos)

    def call(self, name: str, pos: int) -> Node:
        if name in self.leaves or name in LEAVES:
            raise self.fail(f"leaf {name!r} cannot be called like an operator", pos)
        if name not in OPERATORS:
            raise self.fail(f"unknown name {name!r}", pos)
        self.need_op(name, pos)
        open_pos = self.take()[2]
        args = []
        if self.peek()[1] == ")":
            self.take()
        else:
            while True:
                args.append(self.binary(1))
                kind, text, tpos = self.take()
                if text == ")":
                    break
                if text == ",":
                    continue
                if kind == "end":
                    raise self.fail("unbalanced parenthesis: '(' is never closed", open_pos)
                raise self.fail(f"expected ',' or ')' but found {text!r}", tpos)
        arity = OPERATORS[name].arity
        if len(args) != arity:
            raise self.fail(f"operator {name!r} takes {arity} argument{'s' * (arity > 1)}, got {len(args)}", pos)
        return Node.op(name, *args)


def parse_node(expr: str, pset: gp.PrimitiveSet | None = None) -> Node:
    """Parse to the nested :class:`Node` form (see :func:`parse`)."""
    if not isinstance(expr, str):
        raise TypeError(f"expected an expression string, got {type(expr).__name__}")
    try:
        return _Parser(expr, pset or default_pset()).parse()
    except RecursionError:
        raise ExpressionError("expression is nested too deeply", None) from None


def parse(expr: str, pset: gp.PrimitiveSet | None = None) -> gp.PrimitiveTree:
    """Parse an expression string into a DEAP tree, without ``eval``.

    Args:
        expr: Functional (``mul(abs(W), X)``), infix (``abs(W) * X + G``) or mixed; numbers are constants.
        pset: Primitive set whose leaves and operators are allowed; default: every registered one.

    Returns:
        A ``gp.PrimitiveTree``.

    Raises:
        ExpressionError: Unknown name, wrong arity, unbalanced parentheses, trailing input, empty input or a
            bad character; the one-line message gives the 0-based character position.
    """
    pset = pset or default_pset()
    return from_node(parse_node(expr, pset), pset)
