"""Reading back the SymPy form the tool prints (canonical and rank keys such as ``W**2*X`` or ``X*Abs(W)``).

``read_expression`` accepts every form a user meets: the registry's functional and infix grammar
(``parse``) and, where that fails, SymPy's printed form, read by the small grammar below into a SymPy
expression and turned into a tree by ``from_sympy`` — never by ``sympify``, which would ``eval`` the text::

    expr    := term (("+" | "-") term)*
    term    := factor (("*" | "/") factor)*
    factor  := ("-" | "+") factor | power
    power   := primary ("**" factor)?
    primary := NUMBER | LEAF | "E" | FUNCTION "(" expr ("," expr)* ")" | "(" expr ")"

Functions are the SymPy twins of registered operators (``Abs``, ``log``, ``exp``, ``sqrt``, ``tanh``,
``mms``, ``zsn``, ``fro``, ...). The tree read back has the same canonical and rank key as the text.
"""
from __future__ import annotations

import re

import sympy as sp
from deap import gp

from .errors import ExpressionError
from .ops_sympy import fro
from .parse import _error, _tokenize, parse
from .registry import LEAVES
from .sympy_bridge import from_sympy, function_map, leaf_symbol

_SYMPY_ONLY = re.compile(r"\*\*|\b(Abs|fro)\s*\(")


def _functions() -> dict:
    named = {cls.__name__: cls for cls in function_map()}
    return {**named, "sqrt": sp.sqrt, "fro": fro}


class _SympyReader:
    def __init__(self, text: str):
        self.text, self.tokens, self.i = text, _tokenize(text), 0
        self.functions = _functions()

    def fail(self, message: str, pos: int) -> ExpressionError:
        return _error(self.text, message, pos)

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        self.i += 1
        return self.tokens[self.i - 1]

    def expect(self, text: str) -> None:
        kind, found, pos = self.take()
        if found != text:
            raise self.fail(f"expected {text!r}, got {found or 'the end'!r}", pos)

    def read(self) -> sp.Expr:
        expr = self.expr()
        kind, text, pos = self.peek()
        if kind != "end":
            raise self.fail(f"unexpected {text!r} after a complete expression", pos)
        return expr

    def expr(self) -> sp.Expr:
        out = self.term()
        while self.peek()[1] in ("+", "-"):
            out = out + self.term() if self.take()[1] == "+" else out - self.term()
        return out

    def term(self) -> sp.Expr:
        out = self.factor()
        while self.peek()[1] in ("*", "/"):
            out = out * self.factor() if self.take()[1] == "*" else out / self.factor()
        return out

    def factor(self) -> sp.Expr:
        if self.peek()[1] in ("-", "+"):
            sign = self.take()[1]
            operand = self.factor()
            return -operand if sign == "-" else operand
        base = self.primary()
        if self.peek()[1] == "**":
            self.take()
            return base ** self.factor()
        return base

    def primary(self) -> sp.Expr:
        kind, text, pos = self.take()
        if kind == "num":
            return sp.Rational(text)
        if text == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        if kind == "name":
            if text in LEAVES:
                return leaf_symbol(text)
            if text == "E":  # exp(1), as SymPy prints it
                return sp.E
            if text not in self.functions:
                raise self.fail(f"unknown name {text!r}", pos)
            self.expect("(")
            args = [self.expr()]
            while self.peek()[1] == ",":
                self.take()
                args.append(self.expr())
            self.expect(")")
            return self.functions[text](*args)
        raise self.fail(f"unexpected {text or 'end of input'!r}", pos)


def read_sympy_form(text: str) -> sp.Expr:
    """The SymPy expression printed as ``text`` (for example a canonical key), read without ``eval``."""
    try:
        return _SympyReader(text).read()
    except (TypeError, ValueError) as err:  # a function given the wrong number of arguments
        if isinstance(err, ExpressionError):
            raise
        raise ExpressionError(f"cannot read {text!r}: {err}", None) from None


def read_expression(text: str, pset: gp.PrimitiveSet | None = None) -> gp.PrimitiveTree:
    """A tree from any expression the tool shows: the registry grammar, else SymPy's printed form.

    Raises ``ExpressionError`` when neither reads the text, with the SymPy reader's message when the text
    is written in SymPy's form (``**``, ``Abs``, ``fro``), else the registry grammar's."""
    try:
        return parse(text, pset)
    except ExpressionError as first:
        try:
            return from_sympy(read_sympy_form(text), pset)
        except ExpressionError as second:
            raise (second if _SYMPY_ONLY.search(text) else first) from None
