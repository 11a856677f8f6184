"""Errors of the experiment-file layer and the wording every message shares.

Every problem is one line ``<file>: <field.path>: <bad value> <what is wrong>; choose from
<valid>``, collected into one :class:`ConfigError` so that a user fixes a file in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence


class ConfigError(ValueError):
    """An experiment file that cannot run. ``errors`` holds every problem found, one line each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


class Invalid(Exception):
    """A value that fails its check; the message starts with the value (callers add the path)."""


def suggest(value: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (difflib ratio >= 0.6) or ``''``."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choose_from(choices: Iterable[str]) -> str:
    return "choose from " + ", ".join(str(c) for c in choices)


def show(value: object, leaf: Callable[[object], str] = repr) -> str:
    """A value as it appears in messages: ``leaf`` (``repr``) for scalars, a compact flow form
    for lists and mappings."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v, leaf) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v, leaf)}" for k, v in value.items()) + "}"
    return leaf(value)
