"""Matrix expansion, method defaults and the per-cell combination checks.

Cells, in order: the cross product of the matrix axes (first axis slowest, axes in file order);
then each ``include`` entry; every one of them repeated over the top-level ``seeds`` (innermost).
A cell's values are the merge of the file's defaults, then its matrix combination or include
entry; the method's recipe (:data:`suite.recipes.RECIPES`) then fills ``student_bn`` and
``teacher_bn`` where the file gives no value for that cell (BYOL sync/sync, MoCo v2
local/shuffle, m2t local/momentum); ``data_root`` fills ``dataset.root`` where the file gives none;
the two views are resolved in full (:func:`resolve_aug`: method recipe < small-image blur rule <
dataset default < the file's ``aug`` keys), so every cell carries the views it trains with.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from suite.cell import CellConfig
from suite.config.schema import INVALID, VIEWS, Layer, Target
from suite.recipes import RECIPES, recipe
from suite.views import aug_kind, dataset_view_defaults, resolve_views

_DEFAULT = CellConfig()


def recipe_defaults(method: str) -> Layer:
    """The layer a method's recipe fills where the file gives no value: its BN pair."""
    r = recipe(method)
    return {("student_bn",): r.student_bn, ("teacher_bn",): r.teacher_bn}


@dataclass(frozen=True)
class Draft:
    """A cell before resolution: the axes that identify it and its merged layer."""

    axes: dict[str, Any]
    layer: Layer


def merge(*layers: Layer) -> Layer:
    out: Layer = {}
    for layer in layers:
        out.update(layer)
    return out


def drafts(
    defaults: Layer,
    axes: Sequence[tuple[str, Sequence[tuple[Any, Layer]]]],
    includes: Sequence[tuple[Any, Layer]],
    seeds: Sequence[int] | None,
) -> list[Draft]:
    """The cells of a file in their deterministic order (see the module docstring)."""
    base: list[Draft] = []
    if axes:
        for combo in itertools.product(*(values for _, values in axes)):
            labels = {axis: raw for (axis, _), (raw, _) in zip(axes, combo, strict=True)}
            base.append(Draft(labels, merge(defaults, *(layer for _, layer in combo))))
    elif not includes:
        base.append(Draft({}, dict(defaults)))
    for index, (raw, layer) in enumerate(includes):
        labels = {"include": index, **(raw if isinstance(raw, dict) else {})}
        base.append(Draft(labels, merge(defaults, layer)))
    if not seeds:
        return base
    out: list[Draft] = []
    for draft in base:
        if "seed" in draft.axes:  # an include entry that names its seed is not repeated
            out.append(draft)
            continue
        for seed in seeds:
            out.append(Draft({**draft.axes, "seed": seed}, {**draft.layer, ("seed",): seed}))
    return out


def resolve(draft: Draft, data_root: str | None) -> Layer:
    """Apply the method's recipe (its BN pair) and the data root to a draft's layer."""
    layer = dict(draft.layer)
    method = value(layer, ("method", "name"))
    if method in RECIPES:  # an invalid name is already reported
        for target, strategy in recipe_defaults(method).items():
            layer.setdefault(target, strategy)
    if data_root is not None:
        layer.setdefault(("dataset", "root"), data_root)
    return resolve_aug(layer)


def resolve_aug(layer: Layer) -> Layer:
    """Replace the file's ``("aug", view, key)`` values by the two resolved views
    ``("aug", "view1")``, ``("aug", "view2")`` (:class:`~suite.views.ViewSpec`): the method's
    recipe, the small-image blur rule and the dataset's ``view_defaults``, then the file's keys;
    ``INVALID`` when a value they depend on is invalid (that value is already reported)."""
    out = {t: v for t, v in layer.items() if t[0] != "aug"}
    own: dict[str, dict[str, Any]] = {view: {} for view in VIEWS}
    for target, item in layer.items():
        if target[0] == "aug":
            own[target[1]][target[2]] = item
    method, dataset, size = (
        value(layer, t)
        for t in (("method", "name"), ("dataset", "name"), ("dataset", "image_size"))
    )
    inputs = [method, dataset, size, *(v for view in own.values() for v in view.values())]
    if any(v is INVALID for v in inputs):
        views: tuple[Any, Any] = (INVALID, INVALID)
    else:
        views = resolve_views(
            aug_kind(method), size, dataset_view_defaults(dataset), own["view1"], own["view2"]
        )
    for view, spec in zip(VIEWS, views, strict=True):
        out[("aug", view)] = spec
    return out


def value(layer: Layer, target: Target) -> Any:
    """The layer's value, else the :class:`CellConfig` default (``INVALID`` passes through)."""
    if target in layer:
        return layer[target]
    obj: Any = _DEFAULT
    for part in target:
        obj = getattr(obj, part)
    return obj


def build(experiment: str, layer: Layer) -> CellConfig:
    """The frozen cell of a resolved layer (which holds no ``INVALID``): each target is the path
    of a cell field."""
    tree: dict[str, Any] = {"experiment": experiment}
    for target, item in layer.items():
        node = tree
        for part in target[:-1]:
            node = node.setdefault(part, {})
        node[target[-1]] = item
    return CellConfig.from_dict(tree)


def combination_problems(layer: Layer) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about values that are valid alone but not together.

    Errors: ``batch_size % devices != 0``; ``devices % nproc != 0``; a BN group of fewer than 2
    samples for any strategy — one view on one device for the per-device strategies
    (``batch_size / devices``), one view's whole batch for sync (``batch_size``) — BN of one
    sample is 0 (the encoder gets no gradient) and MomentumBN's ``n/(n-1)`` divides by zero;
    MoCo's ``queue_size % batch_size != 0`` (the queue is written one global batch at a time);
    MoCo with a ``pred_hidden`` (it has no predictor).
    Warnings (the cell runs as written): m2t with a student other than local or a teacher other
    than momentum (an ablation); shuffle with one device (nothing to shuffle: equals local);
    ``warmup_epochs >= epochs`` (the schedule never leaves the warm-up; ``CellConfig``'s own
    defaults, 1 epoch and 10 warm-up epochs, do this).
    A check whose inputs include an invalid value is skipped (that value is already reported).
    """
    v = {t: value(layer, t) for t in _COMBO_TARGETS}
    errors: list[str] = []
    warnings: list[str] = []

    def ok(*names: str) -> bool:
        return all(v[_T[n]] is not INVALID for n in names)

    batch, devices, nproc = v[_T["batch_size"]], v[_T["devices"]], v[_T["nproc"]]
    student, teacher = v[_T["student_bn"]], v[_T["teacher_bn"]]
    if ok("batch_size", "devices") and batch % devices:
        errors.append(
            f"batch_size: {batch} is not divisible by devices={devices}; choose a multiple of "
            f"{devices} (each device's BN sees batch_size / devices samples)"
        )
    elif ok("batch_size", "devices", "student_bn", "teacher_bn"):
        # a BN group: one view's samples on one device (per-device strategies), or one view's
        # whole batch (sync): with 1 sample the output is 0 and the encoder gets no gradient
        for field, strategy in (("student_bn", student), ("teacher_bn", teacher)):
            group = batch if strategy == "sync" else batch // devices
            if group >= 2:
                continue
            if strategy == "sync":
                fix = "choose batch_size >= 2"
                where = f"batch_size: {batch} gives SyncBN ({field} 'sync') {group} sample per view"
            else:
                fix = f"choose batch_size >= {2 * devices} or fewer devices"
                where = (
                    f"batch_size: {batch} over devices={devices} leaves {group} sample per "
                    f"device, too few for per-device BN ({field} {strategy!r})"
                )
            errors.append(
                f"{where}; every BN group needs at least 2 samples (each view is normalised on "
                f"its own); {fix}"
            )
            break
    if ok("devices", "nproc") and devices % nproc:
        errors.append(
            f"devices: {devices} is not a multiple of nproc={nproc}; choose a multiple of {nproc} "
            "(each process emulates devices / nproc devices)"
        )
    method = v[_T["method"]]
    if ok("method", "queue_size", "batch_size", "symmetric") and method == "mocov2":
        queue = v[_T["queue_size"]]
        per_step = batch * (2 if v[_T["symmetric"]] else 1)
        what = f"batch_size={batch}" if per_step == batch else f"2 x batch_size={per_step}"
        if queue % per_step:
            errors.append(
                f"method.queue_size: {queue} is not a multiple of {what} (keys enqueued per "
                f"step); choose a multiple of {per_step} (e.g. "
                f"{max(1, queue // per_step) * per_step})"
            )
    pred_hidden = v[_T["pred_hidden"]]
    if ok("method", "pred_hidden") and method == "mocov2" and pred_hidden is not None:
        errors.append(
            f"method.pred_hidden: {pred_hidden} with method mocov2, which has no predictor; set "
            "it to null for MoCo cells (e.g. method: {name: mocov2, pred_hidden: null})"
        )
    warmup, epochs = v[_T["warmup_epochs"]], v[_T["epochs"]]
    if ok("warmup_epochs", "epochs") and 0 < epochs <= warmup:
        warnings.append(
            f"optimizer.warmup_epochs: {warmup:g} is not below epochs={epochs}: the whole run is "
            "warm-up (the lr never reaches lr_per_256 x batch_size / 256); set fewer warm-up "
            "epochs (0 for none) or more epochs"
        )
    if ok("method", "student_bn", "teacher_bn") and method == "m2t":
        m2t = recipe("m2t")
        for field, got, want in (
            ("student_bn", student, m2t.student_bn),
            ("teacher_bn", teacher, m2t.teacher_bn),
        ):
            if got != want:
                warnings.append(
                    f"{field}: {got!r} with method m2t is an ablation (Momentum² Teacher uses "
                    f"{field} {want!r}); it runs as written"
                )
    if ok("teacher_bn", "devices") and teacher == "shuffle" and devices == 1:
        warnings.append(
            "teacher_bn: 'shuffle' with devices=1 has nothing to shuffle across (it equals "
            "'local'); set devices > 1 to emulate ShuffleBN"
        )
    return errors, warnings


_T: dict[str, Target] = {
    "batch_size": ("batch_size",),
    "devices": ("devices",),
    "nproc": ("nproc",),
    "student_bn": ("student_bn",),
    "teacher_bn": ("teacher_bn",),
    "method": ("method", "name"),
    "queue_size": ("method", "queue_size"),
    "symmetric": ("method", "symmetric"),
    "pred_hidden": ("method", "pred_hidden"),
    "warmup_epochs": ("optimizer", "warmup_epochs"),
    "epochs": ("epochs",),
}
_COMBO_TARGETS = tuple(_T.values())
