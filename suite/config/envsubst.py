"""``${VAR}`` and ``${VAR:-default}`` substitution in the string values of an experiment file.

Rule (shell-like): ``${VAR}`` is the value of ``VAR``; ``${VAR:-default}`` is ``default`` when
``VAR`` is unset or empty; ``$${`` writes a literal ``${``. A variable that is unset and has no
default is an error naming the field. Keys are never substituted; non-string values pass through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from suite.config.errors import Invalid

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def substitute(text: str, env: Mapping[str, str]) -> str:
    """``text`` with each ``${…}`` replaced from ``env``; :class:`Invalid` for an unset one."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        body = _BODY.fullmatch(match.group(1))
        if body is None:
            raise Invalid(
                f"{text!r}: malformed {match.group(0)!r}; write ${{NAME}} or ${{NAME:-default}}"
            )
        var, default = body.group(1), body.group(2)
        value = env.get(var)
        if value is None or (value == "" and default is not None):
            if default is None:
                hint = " or pass --data-root (exported as DATA)" if var == "DATA" else ""
                raise Invalid(
                    f"{text!r}: environment variable {var} is not set and has no default; "
                    f"set {var}{hint}, or write ${{{var}:-default}}"
                )
            return default
        return value

    return _TOKEN.sub(one, text)


def substitute_tree(value: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """A copy of a parsed YAML tree with strings substituted; problems go to ``errors``.

    A string that cannot be substituted comes back as :class:`Unresolved` (its error is recorded
    here, once; the field checks skip it).
    """
    if isinstance(value, str):
        try:
            return substitute(value, env)
        except Invalid as exc:
            errors.append(f"{path}: {exc}")
            return Unresolved(value)
    if isinstance(value, dict):
        return {
            k: substitute_tree(v, env, f"{path}.{k}" if path else str(k), errors)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_tree(v, env, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


class Unresolved(str):
    """A string whose substitution failed (its error is recorded once, at substitution)."""
