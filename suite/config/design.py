"""The design of an experiment: ``matrix`` axes, ``include`` entries and ``seeds``.

- ``matrix``: a mapping ``axis: [value, ...]`` over the keys of a cell (``schema.CELL``); each
  value is read like the same key at the top level (``bn`` values are ``[student, teacher]``
  pairs, ``method``/``optimizer``/… values may be mappings that override only the keys they name).
  Two axes may not set the same field.
- ``include``: a list of partial cells (mappings of cell keys with single values), each one cell
  on top of the top-level defaults; list-valued axes are not expanded inside an entry.
- ``seeds``: a list of distinct integers; every cell is repeated once per seed, except an
  ``include`` entry that names its own ``seed``. Not together with ``seed`` or ``matrix.seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from suite.config import checks as c
from suite.config.errors import Invalid, show
from suite.config.schema import CELL, Layer, Target, read_layer, unknown_key

Axis = tuple[str, list[tuple[Any, Layer]]]


def read_matrix(raw: Any, errors: list[str]) -> list[Axis]:
    if not isinstance(raw, dict):
        errors.append(f"matrix: {show(raw)} is not a mapping of axis: [values]")
        return []
    axes = []
    for axis, values in raw.items():
        spec = CELL.keys.get(axis) if isinstance(axis, str) else None
        if spec is None:
            errors.append(unknown_key("matrix", axis, dict(CELL.keys)))
        elif not isinstance(values, list) or not values:
            errors.append(
                f"matrix.{axis}: {show(values)} is not a non-empty list; write {axis}: [a, b, ...]"
            )
        else:
            items = [
                (v, read_layer(spec, v, f"matrix.{axis}[{i}]", errors))
                for i, v in enumerate(values)
            ]
            axes.append((axis, items))
    _overlaps(axes, errors)
    return axes


def _overlaps(axes: list[Axis], errors: list[str]) -> None:
    """Two axes may not set the same field (``teacher_bn`` and ``bn``): the product is ambiguous."""
    owner: dict[Target, str] = {}
    for axis, items in axes:
        mine = {target for _, layer in items for target in layer}
        for other in dict.fromkeys(owner[t] for t in mine if t in owner):
            fields = sorted(".".join(t) for t in mine if owner.get(t) == other)
            errors.append(
                f"matrix.{axis}: sets {', '.join(fields)}, which matrix.{other} also sets; "
                "merge them into one axis (e.g. bn pairs instead of student_bn x teacher_bn)"
            )
        for target in mine:
            owner.setdefault(target, axis)


def read_include(raw: Any, errors: list[str]) -> list[tuple[Any, Layer]]:
    if not isinstance(raw, list):
        errors.append(f"include: {show(raw)} is not a list of partial cells")
        return []
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            errors.append(
                f"include[{i}]: {show(entry)} is not a mapping; valid keys: {', '.join(CELL.keys)}"
            )
            continue
        out.append((entry, read_layer(CELL, entry, f"include[{i}]", errors)))
    return out


def read_seeds(
    raw: dict[str, Any], axes: Sequence[tuple[str, Any]], errors: list[str]
) -> list[int]:
    values = raw["seeds"]
    if "seed" in raw:
        errors.append("seeds: given with seed; give one seed (seed: 0) or a list (seeds: [0, 1])")
    if any(axis == "seed" for axis, _ in axes):
        errors.append("seeds: given with matrix.seed; give the seeds in one place")
    if not isinstance(values, list) or not values:
        errors.append(f"seeds: {show(values)} is not a non-empty list of integers >= 0")
        return []
    seeds: list[int] = []
    for i, value in enumerate(values):
        try:
            seed = c.integer(0)(value)
        except Invalid as exc:
            errors.append(f"seeds[{i}]: {exc}")
            continue
        if seed in seeds:
            errors.append(f"seeds[{i}]: {seed} is repeated; give each seed once")
        else:
            seeds.append(seed)
    return seeds
