"""``load_experiment``: read, substitute, validate and expand one experiment file.

Nothing is half-loaded: either every cell resolves, or :class:`ConfigError` lists every problem.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from suite.cell import CellConfig
from suite.config import checks as c
from suite.config.design import read_include, read_matrix, read_seeds
from suite.config.envsubst import substitute_tree
from suite.config.errors import ConfigError, Invalid, show
from suite.config.expand import Draft, build, combination_problems, drafts, resolve
from suite.config.schema import CELL, INVALID, read_layer, unknown_key

log = logging.getLogger(__name__)

#: Keys allowed only at the top level; every key of ``schema.CELL`` is allowed there too.
TOP_ONLY = ("name", "description", "matrix", "include", "seeds")
TOP_KEYS = (*TOP_ONLY, *CELL.keys)


@dataclass(frozen=True, eq=False)
class Experiment:
    """A validated experiment file and its cells, in their run order."""

    name: str
    path: Path
    description: str
    cell_configs: tuple[CellConfig, ...]
    cell_axes: tuple[dict[str, Any], ...]  # per cell: the matrix / include / seed values naming it
    warnings: tuple[str, ...] = ()

    def cells(self) -> list[CellConfig]:
        return list(self.cell_configs)

    def axes(self) -> list[dict[str, Any]]:
        return [dict(a) for a in self.cell_axes]


def load_experiment(
    path: str | os.PathLike[str],
    *,
    data_root: str | None = None,
    env: Mapping[str, str] | None = None,
    seeds: Sequence[int] | None = None,
) -> Experiment:
    """Load ``path``; raise :class:`ConfigError` with every problem found.

    Environment for ``${VAR}``: ``env`` if given, else ``os.environ``; ``DATA`` is set to
    ``data_root`` only where that environment has no ``DATA``. ``dataset.root``: the file's value
    (after substitution) wins; else ``data_root``; else ``None`` (built-in datasets need none).

    ``seeds`` (``--seeds``) replaces the file's ``seed`` / ``seeds``: every cell once per seed,
    as if the file said ``seeds: [...]`` (used to measure a seed spread of a one-seed matrix).
    """
    file = str(path)
    raw = parse_yaml(file)
    if seeds is not None:
        raw = {k: v for k, v in raw.items() if k not in ("seed", "seeds")}
        raw["seeds"] = list(seeds)
    variables = dict(os.environ if env is None else env)
    if data_root is not None:
        variables.setdefault("DATA", str(data_root))
    errors: list[str] = []
    raw = substitute_tree(raw, variables, "", errors)

    name = _top_scalar(raw, "name", c.name, errors, required=True)
    description = _top_scalar(raw, "description", c.text, errors) or ""
    for key in raw:
        if key not in TOP_KEYS:
            errors.append(unknown_key("", key, list(TOP_KEYS)))
    defaults = read_layer(CELL, {k: v for k, v in raw.items() if k in CELL.keys}, "", errors)
    axes = read_matrix(raw["matrix"], errors) if "matrix" in raw else []
    includes = read_include(raw["include"], errors) if "include" in raw else []
    seeds = read_seeds(raw, axes, errors) if "seeds" in raw else None

    cells, axes_of, warnings = _cells(
        name, drafts(defaults, axes, includes, seeds), data_root, errors
    )
    if errors:
        raise ConfigError([f"{file}: {e}" for e in errors])
    for message in warnings:
        log.warning("%s: %s", file, message)
    return Experiment(
        name=name,
        path=Path(path),
        description=description,
        cell_configs=tuple(cells),
        cell_axes=tuple(axes_of),
        warnings=tuple(f"{file}: {w}" for w in warnings),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping (safe_load keeps the last)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(file: str, valid_keys: Sequence[str] = TOP_KEYS) -> dict[str, Any]:
    """The top-level mapping of a YAML file (duplicate keys rejected), or :class:`ConfigError`."""
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the file ({exc.strerror or exc})"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                f"{file}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not "
                "UTF-8; experiment files must be UTF-8 text (re-save the file as UTF-8, e.g. "
                f"`iconv -f latin1 -t utf-8`)"
            ]
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{file}: {where}: YAML syntax error: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [
                f"{file}: top level: {show(raw)} is not a mapping; "
                f"valid keys: {', '.join(valid_keys)}"
            ]
        )
    return raw


def _top_scalar(
    raw: dict[str, Any], key: str, check: c.Check, errors: list[str], *, required: bool = False
) -> Any:
    if key not in raw:
        if required:
            errors.append(f"{key}: missing; give the experiment a {key} (the MLflow experiment)")
        return None
    try:
        return check(raw[key])
    except Invalid as exc:
        errors.append(f"{key}: {exc}")
        return None


def _describe(axes: dict[str, Any]) -> str:
    """``bn=[local, sync], seed=1``: the values that name a cell, as written."""

    return ", ".join(f"{k}={show(v, str)}" for k, v in axes.items())


def _ranges(indices: list[int]) -> str:
    """``0-3, 7, 9-10`` for ``[0, 1, 2, 3, 7, 9, 10]``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def _grouped(found: dict[str, list[tuple[int, str]]]) -> list[str]:
    """One line per distinct problem: ``cell 3 (…): msg`` or ``cells 0-5 (first: …): msg``."""
    out = []
    for message, cells in found.items():
        index, axes = cells[0]
        where = f"cell {index}" if len(cells) == 1 else f"cells {_ranges([i for i, _ in cells])}"
        if axes:
            where += f" ({axes})" if len(cells) == 1 else f" (first: {axes})"
        out.append(f"{where}: {message}")
    return out


def _cells(
    name: str | None, plan: list[Draft], data_root: str | None, errors: list[str]
) -> tuple[list[CellConfig], list[dict[str, Any]], list[str]]:
    cells: list[CellConfig] = []
    axes_of: list[dict[str, Any]] = []
    problems: dict[str, list[tuple[int, str]]] = {}
    cautions: dict[str, list[tuple[int, str]]] = {}
    first_of: dict[str, str] = {}
    for index, draft in enumerate(plan):
        label = _describe(draft.axes)
        layer = resolve(draft, data_root)
        bad, warn = combination_problems(layer)
        for message in bad:
            problems.setdefault(message, []).append((index, label))
        for message in warn:
            cautions.setdefault(message, []).append((index, label))
        if bad or any(v is INVALID for v in layer.values()):
            continue
        cell = build(name or "", layer)  # a missing name is reported; ids still find repeats
        if cell.cell_id in first_of:
            problems.setdefault(
                f"same resolved values as {first_of[cell.cell_id]} (cell_id {cell.cell_id}); "
                "remove the repetition from matrix / include",
                [],
            ).append((index, label))
            continue
        first_of[cell.cell_id] = f"cell {index}"
        cells.append(cell)
        axes_of.append(draft.axes)
    errors.extend(_grouped(problems))
    return cells, axes_of, _grouped(cautions)
