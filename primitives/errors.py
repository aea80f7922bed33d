"""The one exception type of the package."""
from __future__ import annotations


class ExpressionError(ValueError):
    """A metric expression (string, JSON tree or SymPy expression) that cannot be turned into a tree.

    The message is a single line that names the problem and where it is: a 0-based character position
    for strings, a JSON path such as ``$.left.right`` for Pruner-Zero JSON trees.

    Attributes:
        position: The character position (``int``), the JSON path (``str``) or ``None``.
    """

    def __init__(self, message: str, position: int | str | None = None):
        super().__init__(" ".join(str(message).split()))  # always one line, whatever the input held
        self.position = position
