"""Leaf checks: each takes a raw YAML value and returns it coerced, or raises :class:`Invalid`.

Coercion rules (the whole of them):

- integers: YAML ints, or strings of decimal digits (``${EPOCHS:-2}`` substitutes to a string);
  booleans and floats are rejected (``64.0`` is not a batch size);
- numbers: ints and floats become ``float``; strings that ``float()`` reads are accepted, because
  YAML 1.1 reads ``1e-4`` (no dot) as a string; NaN and infinities are rejected;
- booleans: ``true``/``false``, also as strings (after substitution);
- names: checked against the registry they come from, with a close-match suggestion.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from suite.cell import (
    ENCODERS,
    FLOOR_BN,
    HISTORIES,
    LINEAR_PROTOCOLS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    STRATEGIES,
    VARIANCES,
)
from suite.config.errors import Invalid, choose_from, show, suggest
from suite.recipes import MOMENTUM_SCHEDULES

Check = Callable[[Any], Any]

TEACHER_ONLY = ("momentum", "shuffle")  # need a gradient-free network (the teacher / key encoder)
STUDENT_STRATEGIES = tuple(s for s in STRATEGIES if s not in TEACHER_ONLY)
_INT = re.compile(r"[+-]?\d+")


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def integer(minimum: int) -> Check:
    """An ``int`` with ``value >= minimum``."""
    want = f"choose an integer >= {minimum}"

    def check(value: Any) -> int:
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{value!r} is not an integer; {want}")
        if value < minimum:
            raise Invalid(f"{value!r} is out of range; {want}")
        return value

    return check


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Check:
    """A finite ``float`` within the bounds (``lo_open``/``hi_open``: bound excluded)."""
    want = f"choose a number {_bounds(lo, hi, lo_open, hi_open)}"

    def check(value: Any) -> float:
        raw = value
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise Invalid(f"{raw!r} is not a number; {want}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"{raw!r} is not a number; {want}")
        value = float(value)
        if not math.isfinite(value):
            raise Invalid(f"{raw!r} is not a finite number; {want}")
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            raise Invalid(f"{raw!r} is out of range; {want}")
        return value

    return check


def interval(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Check:
    """A ``[low, high]`` pair of numbers within the bounds with ``low <= high``, as a tuple."""
    element = number(lo, hi, lo_open=lo_open)
    want = f"write [low, high] with low <= high, both {_bounds(lo, hi, lo_open, False)}"

    def check(value: Any) -> tuple[float, float]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise Invalid(f"{show(value)} is not a [low, high] pair; {want}")
        try:
            low, high = element(value[0]), element(value[1])
        except Invalid as exc:
            raise Invalid(f"{show(value)}: {exc}") from None
        if low > high:
            raise Invalid(f"{show(value)} is decreasing; {want}")
        return (low, high)

    return check


def boolean(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise Invalid(f"{value!r} is not a boolean; choose from true, false")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{value!r} is not a string")
    return value


def name(value: Any) -> str:
    """A non-empty one-line string (the experiment name is the MLflow experiment name)."""
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise Invalid(f"{value!r} is not a non-empty one-line string")
    return value


def optional(check: Check) -> Check:
    """``null`` or what ``check`` accepts."""
    return lambda value: None if value is None else check(value)


def choice(choices: Sequence[str] | Callable[[], Sequence[str]], noun: str) -> Check:
    """One of ``choices`` (a tuple, or a function read at check time: registries load lazily)."""

    def check(value: Any) -> str:
        names = tuple(choices() if callable(choices) else choices)
        if not isinstance(value, str) or value not in names:
            raise Invalid(f"{value!r} is not {noun}; {choose_from(names)}{suggest(value, names)}")
        return value

    return check


def student_strategy(value: Any) -> str:
    """A strategy the student can use: momentum and shuffle need a network without gradients."""
    value = choice(STRATEGIES, "a strategy")(value)
    if value in TEACHER_ONLY:
        raise Invalid(
            f"{value!r} is a teacher-only strategy (it needs a network that receives no gradient); "
            f"{choose_from(STUDENT_STRATEGIES)} for the student"
        )
    return value


def dataset_names() -> tuple[str, ...]:
    """The names of ``suite.data.DATASETS`` (imported here: the data package pulls in torch)."""
    from suite.data import DATASETS

    return tuple(DATASETS)


@functools.cache
def _timm_models() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def backbone(value: Any) -> str:
    """A name ``timm.is_model`` accepts (``resnet18``, ``resnet50.a1_in1k`` …); no weights load."""
    import timm

    if not isinstance(value, str) or not timm.is_model(value):
        raise Invalid(
            f"{value!r} is not a timm model; choose from timm.list_models()"
            f"{suggest(value, _timm_models())}"
        )
    return value


probability = number(0, 1)
strategy = choice(STRATEGIES, "a strategy")
method_name = choice(METHODS, "a method")
optimizer_name = choice(OPTIMIZERS, "an optimizer")
encoder = optional(choice(ENCODERS, "an encoder"))
variance = choice(VARIANCES, "a variance convention")
history = choice(HISTORIES, "a history layout")
momentum_schedule = choice(MOMENTUM_SCHEDULES, "a momentum schedule")
precision = choice(PRECISIONS, "a precision")
floor_bn = choice(FLOOR_BN, "a floor BN setting")
linear_protocol = choice(LINEAR_PROTOCOLS, "a linear-probe protocol")
dataset = choice(dataset_names, "a dataset")
