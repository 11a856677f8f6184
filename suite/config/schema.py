"""The experiment-file schema: every key a user may write, its check, and where it lands in a cell.

A *layer* is a flat mapping ``target -> value`` where ``target`` is the path of a
:class:`~suite.cell.CellConfig` field (``("optim", "lr_per_256")``). The file's top-level values,
one matrix combination and one ``include`` entry are layers; a cell is their merge in that order
(a later layer wins key by key), so a mapping in a matrix axis overrides only the keys it names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from suite.config import checks as c
from suite.config.envsubst import Unresolved
from suite.config.errors import Invalid, show, suggest

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


def _leaf(*target: str, check: c.Check) -> Leaf:
    return Leaf(tuple(target), check)


_POS = c.integer(1)
_STUDENT = _leaf("student_bn", check=c.student_strategy)
_TEACHER = _leaf("teacher_bn", check=c.strategy)
_IMAGE_SIZE = _leaf("data", "image_size", check=_POS)

DATASET = Section(
    {
        "name": _leaf("data", "name", check=c.dataset),
        "root": _leaf("data", "root", check=c.optional(c.text)),
        "image_size": _IMAGE_SIZE,
        "num_workers": _leaf("data", "num_workers", check=c.integer(0)),
    }
)
#: One view's keys (``suite.views.ViewSpec`` fields) and their checks.
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
VIEWS = ("view1", "view2")
AUG = Section(
    {
        **{
            key: Fan(tuple(_leaf("aug", view, key, check=check) for view in VIEWS))
            for key, check in VIEW_CHECKS.items()
        },
        **{
            view: Section(
                {key: _leaf("aug", view, key, check=ch) for key, ch in VIEW_CHECKS.items()}
            )
            for view in VIEWS
        },
    }
)
#: Keys that were removed, and what replaces them (reported instead of "unknown key").
MOVED = {
    "dataset.blur": "replaced by aug.blur_p (both views) or aug.view1.blur_p / aug.view2.blur_p, "
    "probabilities in [0, 1]; by default the method's recipe, with blur off at <= 64 px",
}
METHOD = Section(
    {
        "name": _leaf("method", "name", check=c.method_name),
        "proj_hidden": _leaf("method", "proj_hidden", check=c.optional(_POS)),
        "proj_dim": _leaf("method", "proj_dim", check=c.optional(_POS)),
        "pred_hidden": _leaf("method", "pred_hidden", check=c.optional(_POS)),
        "base_momentum": _leaf(
            "method", "base_momentum", check=c.optional(c.number(0, 1, hi_open=True))
        ),
        "queue_size": _leaf("method", "queue_size", check=_POS),
        "temperature": _leaf("method", "temperature", check=c.number(0, lo_open=True)),
        "symmetric": _leaf("method", "symmetric", check=c.boolean),
        "momentum_schedule": _leaf(
            "method", "momentum_schedule", check=c.optional(c.momentum_schedule)
        ),
    },
    shorthand="name",
)
OPTIMIZER = Section(
    {
        "name": _leaf("optim", "name", check=c.optimizer_name),
        "lr_per_256": _leaf("optim", "lr_per_256", check=c.number(0, lo_open=True)),
        "weight_decay": _leaf("optim", "weight_decay", check=c.number(0)),
        "momentum": _leaf("optim", "momentum", check=c.number(0, 1, hi_open=True)),
        "warmup_epochs": _leaf("optim", "warmup_epochs", check=c.number(0)),
        "warmup_lr": _leaf("optim", "warmup_lr", check=c.number(0)),
        "exclude_bn_and_bias": _leaf("optim", "exclude_bn_and_bias", check=c.boolean),
    }
)
EVAL = Section(
    {
        "knn": Section(
            {
                "k": _leaf("eval", "knn_k", check=_POS),
                "temperature": _leaf("eval", "knn_temperature", check=c.number(0, lo_open=True)),
            }
        ),
        "linear": Section(
            {
                "epochs": _leaf("eval", "linear_epochs", check=_POS),
                "lr": _leaf("eval", "linear_lr", check=c.number(0, lo_open=True)),
                "batch_size": _leaf("eval", "linear_batch_size", check=_POS),
                "protocol": _leaf("eval", "linear_protocol", check=c.linear_protocol),
            }
        ),
        "encoder": _leaf("eval", "encoder", check=c.encoder),
        "random_init_floor": _leaf("eval", "random_init_floor", check=c.boolean),
        "floor_bn": _leaf("eval", "floor_bn", check=c.floor_bn),
    }
)
BENCH = Section(
    {
        "steps": _leaf("bench", "steps", check=c.integer(0)),
        "warmup": _leaf("bench", "warmup", check=c.integer(0)),
        "reference": _leaf("bench", "reference", check=c.boolean),
        "supervised": _leaf("bench", "supervised", check=c.boolean),
    }
)

#: Keys that describe a cell: top-level defaults, matrix axes and ``include`` entries.
CELL = Section(
    {
        "dataset": DATASET,
        "image_size": _IMAGE_SIZE,
        "aug": AUG,
        "backbone": _leaf("backbone", check=c.backbone),
        "cifar_stem": _leaf("method", "cifar_stem", check=c.optional(c.boolean)),
        "method": METHOD,
        "epochs": _leaf("epochs", check=_POS),
        "max_steps": _leaf("max_steps", check=c.optional(_POS)),
        "batch_size": _leaf("batch_size", check=_POS),
        "devices": _leaf("devices", check=_POS),
        "nproc": _leaf("nproc", check=_POS),
        "student_bn": _STUDENT,
        "teacher_bn": _TEACHER,
        "bn": Pair(_STUDENT, _TEACHER),
        "bn_variance": _leaf("bn_variance", check=c.variance),
        "bn_history": _leaf("bn_history", check=c.history),
        "optimizer": OPTIMIZER,
        "eval": EVAL,
        "precision": _leaf("precision", check=c.precision),
        "channels_last": _leaf("channels_last", check=c.optional(c.boolean)),
        "log_every": _leaf("log_every", check=_POS),
        "checkpoint_every": _leaf("checkpoint_every", check=_POS),
        "seed": _leaf("seed", check=c.integer(0)),
        "bench": BENCH,
    }
)


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
