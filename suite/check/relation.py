"""Relations between groups of cells, parsed without ``eval``.

A relation compares two arithmetic expressions over groups of cells (a group's metric, per seed
or averaged over the cells it selects), in the baseline file's unit::

    local/local < sync/sync - 2                 # per-device BN costs BYOL more than 2 points
    local/momentum ~= sync/sync                 # within ``margin`` of each other (equivalence)
    local/momentum >= 0.97 * local/local        # a throughput ratio (metric images_per_s)
    m2t_b32 >= byol_b512 - 1                    # named groups, defined in the relation's ``groups``

The judge (:mod:`suite.check.judge`) tests the *contrast* ``left − right``: below zero for
``<``/``<=``, above zero for ``>``/``>=`` (one-sided tests; ``<`` and ``<=`` are the same claim
about a continuous quantity), inside ``±margin`` for ``~=`` (two one-sided tests).

Grammar (whitespace is free)::

    relation := expr OP expr          OP := '<' | '<=' | '>' | '>=' | '~='
    expr     := term (('+' | '-') term)*
    term     := factor (('*' | '/') factor)*
    factor   := NUMBER | GROUP | '(' expr ')' | '-' factor
    GROUP    := STUDENT '/' TEACHER   (a strategy pair: {student_bn: S, teacher_bn: T})
              | NAME                  (a key of the relation's ``groups`` mapping)

A ``/`` between two strategy names is a pair, never a division (write ``(a) / (b)`` to divide by
a group called like a strategy).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from suite.cell import STRATEGIES
from suite.config.errors import suggest

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "~=": operator.eq,  # judged against the relation's margin, never as exact equality
    "<": operator.lt,
    ">": operator.gt,
}
#: the direction a relation claims for its contrast ``left − right``
DIRECTIONS = {"<": "<", "<=": "<", ">": ">", ">=": ">", "~=": "~"}
_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<pair>[A-Za-z_]\w*/[A-Za-z_]\w*)"
    r"|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op><=|>=|~=|<|>)"
    r"|(?P<punct>[-+*/()]))"
)


class RelationSyntaxError(ValueError):
    """A relation that does not parse; the message shows where."""


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Group:
    """A group of cells: ``name`` as written; ``pair`` when written as ``student/teacher``."""

    name: str
    pair: tuple[str, str] | None = None


@dataclass(frozen=True)
class Neg:
    operand: Expr


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Expr
    right: Expr


Expr = Num | Group | Neg | BinOp


@dataclass(frozen=True)
class Relation:
    """``left OP right``, as parsed from ``text``."""

    text: str
    left: Expr
    op: str
    right: Expr

    def groups(self) -> list[Group]:
        """Every group the relation names, in order of first appearance."""
        seen: dict[str, Group] = {}
        for side in (self.left, self.right):
            for g in _groups(side):
                seen.setdefault(g.name, g)
        return list(seen.values())

    @property
    def direction(self) -> str:
        """``<`` or ``>`` (the contrast's claimed sign), ``~`` (equal within a margin)."""
        return DIRECTIONS[self.op]

    def sides(self, means: Mapping[str, float]) -> tuple[float, float]:
        """``(left value, right value)`` with each group replaced by ``means[name]``."""
        return value(self.left, means), value(self.right, means)

    def contrast(self, means: Mapping[str, float]) -> float:
        """``left − right`` with each group replaced by ``means[name]``."""
        lhs, rhs = self.sides(means)
        return lhs - rhs

    def gradient(self, means: Mapping[str, float]) -> dict[str, float]:
        """``∂(left − right)/∂(group)`` at ``means`` (central differences; exact for the linear
        relations that ``+``, ``-`` and a number's ``*`` make): each group's weight in the
        contrast, for its standard error when the groups share no seeds."""
        out = {}
        for name, mu in means.items():
            h = 1e-6 * max(1.0, abs(mu))
            up = self.contrast({**means, name: mu + h})
            down = self.contrast({**means, name: mu - h})
            out[name] = (up - down) / (2 * h)
        return out


def _groups(expr: Expr) -> list[Group]:
    if isinstance(expr, Group):
        return [expr]
    if isinstance(expr, Neg):
        return _groups(expr.operand)
    if isinstance(expr, BinOp):
        return _groups(expr.left) + _groups(expr.right)
    return []


def value(expr: Expr, means: Mapping[str, float]) -> float:
    """The expression's value with groups replaced by their means."""
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Group):
        return means[expr.name]
    if isinstance(expr, Neg):
        return -value(expr.operand, means)
    a, b = value(expr.left, means), value(expr.right, means)
    if expr.op == "+":
        return a + b
    if expr.op == "-":
        return a - b
    if expr.op == "*":
        return a * b
    return a / b if b != 0 else float("nan")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            col = len(text) - len(text[pos:].lstrip())
            raise RelationSyntaxError(f"unexpected {text[col]!r} at column {col + 1} in {text!r}")
        kind = m.lastgroup or ""
        tok = m.group(kind)
        if kind == "pair":
            first, second = tok.split("/")
            if (first in STRATEGIES) != (second in STRATEGIES):
                bad = second if first in STRATEGIES else first
                raise RelationSyntaxError(
                    f"{tok!r} in {text!r}: {bad!r} is not a BN strategy; "
                    f"choose from {', '.join(STRATEGIES)}{suggest(bad, STRATEGIES)}"
                )
            if first not in STRATEGIES:  # ``a/b`` of two group names is a division
                tokens += [
                    ("name", first, m.start(kind)),
                    ("punct", "/", m.start(kind) + len(first)),
                ]
                tokens.append(("name", second, m.start(kind) + len(first) + 1))
                pos = m.end()
                continue
        tokens.append((kind, tok, m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def fail(self, what: str) -> RelationSyntaxError:
        tok = self.peek()
        where = f"{tok[1]!r} at column {tok[2] + 1}" if tok else "the end"
        return RelationSyntaxError(f"expected {what}, found {where} in {self.text!r}")

    def take(self, *values: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok[0] in ("punct", "op") and tok[1] in values:
            self.i += 1
            return tok[1]
        return None

    def relation(self) -> Relation:
        left = self.expr()
        tok = self.peek()
        if tok is None or tok[0] != "op":
            raise self.fail("a comparison (<, <=, >, >=, ~=)")
        self.i += 1
        right = self.expr()
        if self.peek() is not None:
            raise self.fail("the end of the relation")
        return Relation(self.text, left, tok[1], right)

    def expr(self) -> Expr:
        node = self.term()
        while (op := self.take("+", "-")) is not None:
            node = BinOp(op, node, self.term())
        return node

    def term(self) -> Expr:
        node = self.factor()
        while (op := self.take("*", "/")) is not None:
            node = BinOp(op, node, self.factor())
        return node

    def factor(self) -> Expr:
        if self.take("-"):
            return Neg(self.factor())
        if self.take("("):
            node = self.expr()
            if not self.take(")"):
                raise self.fail("')'")
            return node
        tok = self.peek()
        if tok is None:
            raise self.fail("a number or a group")
        kind, text, _ = tok
        if kind == "number":
            self.i += 1
            return Num(float(text))
        if kind == "pair":
            self.i += 1
            student, teacher = text.split("/")
            return Group(text, (student, teacher))
        if kind == "name":
            self.i += 1
            return Group(text)
        raise self.fail("a number or a group")


def parse_relation(text: str) -> Relation:
    """Parse ``text`` (see the module docstring); raise :class:`RelationSyntaxError`."""
    if not isinstance(text, str) or not text.strip():
        raise RelationSyntaxError(
            f"{text!r} is not a relation; write e.g. 'local/local < sync/sync'"
        )
    return _Parser(text.strip()).relation()
