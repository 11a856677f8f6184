"""What a report shows, read from a plan: configurations (cells that differ only in their seed),
their per-seed metrics, the label a configuration is shown under, and where the runs were made."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suite.check import metrics as m
from suite.check.results import Stat

if TYPE_CHECKING:
    from suite.check.results import CheckResult
    from suite.runner.plan import Plan, PlannedCell

#: recorded with every run (suite/tracking/env.py); shown in the provenance table
PROVENANCE_TAGS = (
    ("suite.git_commit", "git commit"),
    ("suite.git_dirty", "uncommitted changes in suite/"),
    ("suite.version", "bnsuite"),
    ("suite.python", "python"),
    ("suite.torch", "torch"),
    ("suite.timm", "timm"),
    ("suite.mlflow", "mlflow"),
    ("suite.cuda", "CUDA"),
    ("suite.device", "device"),
    ("suite.host", "host"),
)
BN_FIELDS = ("student_bn", "teacher_bn")


@dataclass(frozen=True)
class Config:
    """Cells of one experiment that differ only in their seed."""

    label: str
    values: dict[str, Any]  # the varying fields (flat, dotted), seed excluded
    cells: tuple[PlannedCell, ...]

    @property
    def cell_ids(self) -> frozenset[str]:
        return frozenset(c.cell_id for c in self.cells)

    @property
    def method(self) -> str:
        """The method its cells train (one per configuration unless the method is left out)."""
        names = dict.fromkeys(c.cell.method.name for c in self.cells)
        return "+".join(names) or "-"

    def stat(self, metric: str, scale: float = 1.0) -> Stat:
        """``metric`` over the finished cells (derived metrics computed), times ``scale``."""
        return Stat(tuple(v for _, v in self._values(metric, scale)))

    def per_seed(self, metric: str, scale: float = 1.0) -> dict[int, float]:
        """``seed -> metric × scale`` of the finished cells that carry a finite value (for a
        configuration of cells that differ only in their seed: one value per seed)."""
        return dict(self._values(metric, scale))

    def _values(self, metric: str, scale: float) -> list[tuple[int, float]]:
        out = []
        for cell in self.cells:
            v = m.cell_value(cell.metrics, metric) if cell.done else None
            if v is not None and math.isfinite(v):
                out.append((cell.cell.seed, v * scale))
        return out


def label(values: Mapping[str, Any], cells: Sequence[PlannedCell], drop: Sequence[str] = ()) -> str:
    """``byol local/momentum 8 per device``: a configuration named by its varying values, with
    ``devices=D`` written as the per-device batch ``B/D per device`` (B: the cells' common
    ``batch_size``; ``on D devices`` when the cells' batch sizes differ). Fields whose dotted
    name starts with one of ``drop`` are left out (a panel that already names the method)."""
    from suite.runner.plan import config_label

    kept = {k: v for k, v in values.items() if not any(k.startswith(d) for d in drop)}
    devices = kept.pop("devices", None)
    text = config_label(kept) if kept else ""
    if devices is None:
        return text or "all cells"
    batches = {int(values.get("batch_size", pc.cell.batch_size)) for pc in cells}
    if len(batches) == 1:
        per = batches.pop() / int(devices)
        part = f"{per:g} per device"
    else:
        part = f"on {devices} devices"
    return f"{text} {part}".strip()


def configurations(plan: Plan, without: tuple[str, ...] = ("seed",)) -> list[Config]:
    """Group the plan's cells by their varying fields except ``without``, in plan order.

    When ``student_bn`` or ``teacher_bn`` varies, both are kept in the label (``local/momentum``)
    so every configuration reads as its BN pair; the label is :func:`label`'s.
    """
    from suite.runner.plan import identifying_fields

    fields = [f for f in plan.fields if f not in without]
    fields = identifying_fields([pc.cell for pc in plan.cells], fields)
    if any(f in fields for f in BN_FIELDS):
        fields = [f for f in fields if f not in BN_FIELDS] + list(BN_FIELDS)
    groups: dict[tuple, list[PlannedCell]] = {}
    values_of: dict[tuple, dict[str, Any]] = {}
    for pc in plan.cells:
        flat = pc.cell.flat()
        values = {f: flat[f] for f in fields}
        key = tuple(repr(v) for v in values.values())
        groups.setdefault(key, []).append(pc)
        values_of[key] = values
    return [
        Config(label(values_of[k], cells), values_of[k], tuple(cells))
        for k, cells in groups.items()
    ]


def batch_series(plan: Plan) -> dict[str, list[tuple[int, Config]]]:
    """Configurations without ``batch_size``, each a line of (batch size, config) points."""
    if "batch_size" not in plan.fields:
        return {}
    series: dict[str, list[tuple[int, Config]]] = {}
    for config in configurations(plan, without=("seed", "batch_size")):
        groups: dict[int, list[PlannedCell]] = {}
        for pc in config.cells:
            groups.setdefault(pc.cell.batch_size, []).append(pc)
        series[config.label] = [
            (b, Config(label(v, cells), v, tuple(cells)))
            for b, cells in groups.items()
            for v in [{**config.values, "batch_size": b}]
        ]
    return series


def paper_marks(result: CheckResult, configs: Sequence[Config]) -> dict[tuple[str, str], float]:
    """``(config label, metric) -> expected (percent)`` for the equivalence entries that select
    exactly a configuration: a judged number of the same setting. A reference (a number of
    another setting or protocol, never judged), a bound and a regression threshold are not
    marked on an accuracy axis."""
    by_cells = {c.cell_ids: c for c in configs}
    marks = {}
    for r in result.entries:
        e = r.entry
        config = by_cells.get(frozenset(r.selection.cells))
        if e.kind != "equivalence" or e.protocol_differs or e.expected is None:
            continue
        if config is None or not m.is_accuracy(e.metric):
            continue
        marks[(config.label, e.metric)] = e.expected * (100.0 / m.UNITS[e.unit])
    return marks


def loss_histories(
    plan: Plan, configs: Sequence[Config]
) -> dict[str, list[list[tuple[int, float]]]]:
    """``label -> [train/loss history of each finished run]`` (read from the tracking store)."""
    from suite.tracking import metric_history

    out = {}
    for c in configs:
        out[c.label] = [
            metric_history(plan.tracking_uri, pc.run_id, "train/loss")
            for pc in c.cells
            if pc.done and pc.run_id
        ]
    return out


@dataclass(frozen=True)
class BenchPoint:
    """One finished bench cell (:mod:`suite.throughput`)."""

    method: str
    pair: str  # student/teacher BN
    nproc: int
    image_size: int
    images_per_s: float
    vs_local: float | None  # images/s ÷ the interleaved local/local step's


def bench_points(plan: Plan) -> list[BenchPoint]:
    """Every finished bench cell that logged images/s, in plan order."""
    out = []
    for pc in plan.cells:
        if pc.done and pc.cell.is_bench and "images_per_s" in pc.metrics:
            c = pc.cell
            ratio = pc.metrics.get("images_per_s_vs_local")
            out.append(
                BenchPoint(
                    c.method.name,
                    f"{c.student_bn}/{c.teacher_bn}",
                    c.nproc,
                    c.dataset.image_size,
                    float(pc.metrics["images_per_s"]),
                    None if ratio is None else float(ratio),
                )
            )
    return out


def provenance(plan: Plan) -> list[tuple[str, str]]:
    """``(what, values)`` of the finished runs' environment tags (distinct values joined)."""
    rows = []
    done = [c for c in plan.cells if c.done]
    for tag, what in PROVENANCE_TAGS:
        seen = sorted({c.tags.get(tag, "unknown") for c in done})
        if seen:
            rows.append((what, ", ".join(seen)))
    return rows
