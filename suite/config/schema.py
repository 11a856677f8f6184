"""The experiment-file schema, derived from the cell: every key a user may write and its check.

The keys of a cell are the field paths of :class:`~suite.cell.CellConfig` (``dataset.image_size``,
``optimizer.lr_per_256``, ``eval.knn.k``): :data:`CELL` is built from the dataclasses, and each
field's check comes from :data:`CHECKS` (``VIEW_CHECKS`` for the keys of a view), so adding a key
is a field in ``suite/cell.py`` and its check here. On top of that tree, the documented shorthands:
``image_size`` for ``dataset.image_size``, ``bn: [student, teacher]``, a
method name for ``method.name`` (``method: byol``), and ``aug.<key>`` for both views.

A *layer* is a flat mapping ``target -> value`` where ``target`` is the path of a cell field
(``("optimizer", "lr_per_256")``). The file's top-level values, one matrix combination and one
``include`` entry are layers; a cell is their merge in that order (a later layer wins key by key),
so a mapping in a matrix axis overrides only the keys it names.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from suite.cell import AugConfig, CellConfig
from suite.config import checks as c
from suite.config.envsubst import Unresolved
from suite.config.errors import Invalid, show, suggest
from suite.views import ViewSpec

Target = tuple[str, ...]
Layer = dict[Target, Any]


class _InvalidValue:
    """Placeholder for a value that failed its check: its checks are reported, cells skip it."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _InvalidValue()


@dataclass(frozen=True)
class Leaf:
    """One value: its check and the cell field it sets."""

    target: Target
    check: c.Check


@dataclass(frozen=True)
class Pair:
    """``bn: [student, teacher]``: two leaves written as one list."""

    first: Leaf
    second: Leaf


@dataclass(frozen=True)
class Fan:
    """One value written once for several fields (``aug.flip_p`` sets both views' ``flip_p``)."""

    leaves: tuple[Leaf, ...]


@dataclass(frozen=True)
class Section:
    """A mapping of keys; with ``shorthand``, a scalar ``v`` means ``{shorthand: v}``."""

    keys: Mapping[str, Leaf | Pair | Fan | Section]
    shorthand: str | None = None


Spec = Leaf | Pair | Fan | Section

_POS = c.integer(1)

#: The check of every cell field, by its path (the key a user writes). A field without a check
#: here, or a check for no field, is an error when this module is imported.
CHECKS: dict[str, c.Check] = {
    "dataset.name": c.dataset,
    "dataset.root": c.optional(c.text),
    "dataset.image_size": _POS,
    "dataset.num_workers": c.integer(0),
    "backbone": c.backbone,
    "cifar_stem": c.optional(c.boolean),
    "method.name": c.method_name,
    "method.proj_hidden": c.optional(_POS),
    "method.proj_dim": c.optional(_POS),
    "method.pred_hidden": c.optional(_POS),
    "method.base_momentum": c.optional(c.number(0, 1, hi_open=True)),
    "method.queue_size": _POS,
    "method.temperature": c.number(0, lo_open=True),
    "method.symmetric": c.boolean,
    "method.momentum_schedule": c.optional(c.momentum_schedule),
    "epochs": _POS,
    "max_steps": c.optional(_POS),
    "batch_size": _POS,
    "devices": _POS,
    "nproc": _POS,
    "student_bn": c.student_strategy,
    "teacher_bn": c.strategy,
    "bn_variance": c.variance,
    "bn_history": c.history,
    "optimizer.name": c.optimizer_name,
    "optimizer.lr_per_256": c.number(0, lo_open=True),
    "optimizer.weight_decay": c.number(0),
    "optimizer.momentum": c.number(0, 1, hi_open=True),
    "optimizer.warmup_epochs": c.number(0),
    "optimizer.warmup_lr": c.number(0),
    "optimizer.exclude_bn_and_bias": c.boolean,
    "eval.knn.k": _POS,
    "eval.knn.temperature": c.number(0, lo_open=True),
    "eval.linear.epochs": _POS,
    "eval.linear.lr": c.number(0, lo_open=True),
    "eval.linear.batch_size": _POS,
    "eval.linear.protocol": c.linear_protocol,
    "eval.encoder": c.encoder,
    "eval.random_init_floor": c.boolean,
    "eval.floor_bn": c.floor_bn,
    "eval.floor_inits": _POS,
    "precision": c.precision,
    "channels_last": c.optional(c.boolean),
    "log_every": _POS,
    "checkpoint_every": _POS,
    "seed": c.integer(0),
    "bench.steps": c.integer(0),
    "bench.warmup": c.integer(0),
    "bench.reference": c.boolean,
    "bench.supervised": c.boolean,
}
#: One view's keys (:class:`~suite.views.ViewSpec` fields, ``aug.view1.<key>``) and their checks.
VIEW_CHECKS: dict[str, c.Check] = {
    "scale": c.interval(0, 1, lo_open=True),
    "ratio": c.interval(0, lo_open=True),
    "flip_p": c.probability,
    "brightness": c.number(0),
    "contrast": c.number(0),
    "saturation": c.number(0),
    "hue": c.number(0, 0.5),
    "jitter_p": c.probability,
    "gray_p": c.probability,
    "blur_p": c.probability,
    "blur_sigma": c.interval(0, lo_open=True),
    "solarize_p": c.probability,
    "solarize_threshold": c.number(0, 1),
}
#: Cell fields that are not keys of a cell: ``experiment`` is the file's top-level ``name``.
NOT_KEYS = ("experiment",)
#: Keys that were removed, and what replaces them (reported instead of "unknown key").
MOVED = {
    "dataset.blur": "replaced by aug.blur_p (both views) or aug.view1.blur_p / aug.view2.blur_p, "
    "probabilities in [0, 1]; by default the method's recipe, with blur off at <= 64 px",
}


def _section(cls: type, prefix: Target, unchecked: list[str]) -> Section:
    """The keys of dataclass ``cls`` at ``prefix``: a section per nested dataclass, a leaf with its
    check per other field (``unchecked`` collects fields that have none)."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, Spec] = {}
    for f in dataclasses.fields(cls):
        if not prefix and f.name in NOT_KEYS:
            continue
        target = (*prefix, f.name)
        inner = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
        kind = inner[0] if len(inner) == 1 else hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys[f.name] = _section(kind, target, unchecked)
            continue
        table, name = (VIEW_CHECKS, f.name) if cls is ViewSpec else (CHECKS, ".".join(target))
        if name in table:
            keys[f.name] = Leaf(target, table[name])
        else:
            unchecked.append(".".join(target))
    return Section(keys)


def _leaves(spec: Spec) -> list[Leaf]:
    if isinstance(spec, Leaf):
        return [spec]
    if isinstance(spec, Section):
        return [leaf for sub in spec.keys.values() for leaf in _leaves(sub)]
    return []


def unchecked_fields(cell_type: type = CellConfig) -> tuple[list[str], list[str]]:
    """``(fields without a check, checks for no field)`` of ``cell_type``: both empty, or the
    schema cannot be built."""
    unchecked: list[str] = []
    tree = _section(cell_type, (), unchecked)
    fields = {".".join(leaf.target) for leaf in _leaves(tree) if leaf.target[0] != "aug"}
    views = {f.name for f in dataclasses.fields(ViewSpec)}
    stray = sorted(set(CHECKS) - fields) + [f"aug.view*.{k}" for k in VIEW_CHECKS if k not in views]
    return unchecked, stray


def _sub(keys: Mapping[str, Spec], name: str) -> Section:
    section = keys[name]
    assert isinstance(section, Section)
    return section


def _cell_schema() -> Section:
    """The tree of :class:`~suite.cell.CellConfig`, then the shorthands (module docstring)."""
    unchecked, stray = unchecked_fields()
    if unchecked or stray:
        raise RuntimeError(
            f"suite.config.schema: cell fields without a check in CHECKS: {unchecked or 'none'}; "
            f"checks for no cell field: {stray or 'none'}"
        )
    tree = _section(CellConfig, (), [])
    out: dict[str, Spec] = {}
    for key, spec in tree.keys.items():
        if key == "aug":  # aug.<key> sets both views; then aug.view1 / aug.view2
            aug = _sub(tree.keys, "aug")
            views = [_sub(aug.keys, v) for v in VIEWS]
            fans = {k: Fan(tuple(_leaves(v.keys[k])[0] for v in views)) for k in views[0].keys}
            spec = Section({**fans, **aug.keys})
        elif key == "method":  # method: byol
            spec = Section(_sub(tree.keys, "method").keys, shorthand="name")
        out[key] = spec
        if key == "dataset":  # image_size: 32
            out["image_size"] = _sub(tree.keys, "dataset").keys["image_size"]
        elif key == "teacher_bn":  # bn: [local, momentum]
            out["bn"] = Pair(*(_leaves(tree.keys[k])[0] for k in ("student_bn", "teacher_bn")))
    return Section(out)


VIEWS = tuple(f.name for f in dataclasses.fields(AugConfig))  # view1, view2
#: Keys that describe a cell: top-level defaults, matrix axes and ``include`` entries.
CELL = _cell_schema()


def unknown_key(path: str, key: object, valid: Mapping[str, Any] | list[str]) -> str:
    names = list(valid)
    where = f"{path}.{key}" if path else str(key)
    section = re.sub(r"\[\d+\]", "", path).rpartition(".")[2]  # include[0].dataset -> dataset
    moved = MOVED.get(f"{section}.{key}")
    if moved is not None:
        return f"{where}: {moved}"
    return f"{where}: unknown key; valid keys: {', '.join(names)}{suggest(key, names)}"


class LayerReader:
    """Reads raw YAML values into one layer, appending ``<path>: <problem>`` lines to ``errors``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.layer: Layer = {}
        self._where: dict[Target, str] = {}

    def read(self, spec: Spec, value: Any, path: str) -> None:
        if isinstance(spec, Leaf):
            self._leaf(spec, value, path)
        elif isinstance(spec, Pair):
            if not isinstance(value, list) or len(value) != 2:
                self.errors.append(
                    f"{path}: {show(value)} is not a [student, teacher] pair; "
                    "write e.g. [local, momentum]"
                )
                self._set(spec.first, INVALID, path)
                self._set(spec.second, INVALID, path)
                return
            self._leaf(spec.first, value[0], f"{path}[0]")
            self._leaf(spec.second, value[1], f"{path}[1]")
        elif isinstance(spec, Fan):
            self._leaf(spec.leaves[0], value, path)
            for leaf in spec.leaves[1:]:
                self._set(leaf, self.layer[spec.leaves[0].target], path)
        elif not isinstance(value, Mapping):
            if spec.shorthand is not None:
                self.read(spec.keys[spec.shorthand], value, path)
            else:
                self.errors.append(
                    f"{path}: {show(value)} is not a mapping; valid keys: {', '.join(spec.keys)}"
                )
        else:
            for key, item in value.items():
                sub = spec.keys.get(key) if isinstance(key, str) else None
                if sub is None:
                    self.errors.append(unknown_key(path, key, dict(spec.keys)))
                else:
                    self.read(sub, item, f"{path}.{key}" if path else key)

    def _leaf(self, leaf: Leaf, value: Any, path: str) -> None:
        if isinstance(value, Unresolved):  # reported by the substitution
            self._set(leaf, INVALID, path)
            return
        try:
            value = leaf.check(value)
        except Invalid as exc:
            self.errors.append(f"{path}: {exc}")
            value = INVALID
        self._set(leaf, value, path)

    def _set(self, leaf: Leaf, value: Any, path: str) -> None:
        if leaf.target in self._where:
            self.errors.append(
                f"{path}: sets {'.'.join(leaf.target)} which {self._where[leaf.target]} "
                "already sets; give it once"
            )
        self._where[leaf.target] = path
        self.layer[leaf.target] = value


def read_layer(spec: Spec, value: Any, path: str, errors: list[str]) -> Layer:
    """One raw value (``{dataset: …, bn: […]}`` or a single axis element) as a layer."""
    reader = LayerReader(errors)
    reader.read(spec, value, path)
    return reader.layer
