"""What a report shows, read from a plan: configurations (cells that differ only in their seed),
their per-seed metrics, and where the runs were made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suite.check import metrics as m
from suite.check.judge import Stat

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class Config:
    """Cells of one experiment that differ only in their seed."""

    label: str
    values: dict[str, Any]  # the varying fields (flat, dotted), seed excluded
    cells: tuple[PlannedCell, ...]

    @property
    def cell_ids(self) -> frozenset[str]:
        return frozenset(c.cell_id for c in self.cells)

    def stat(self, metric: str, scale: float = 1.0) -> Stat:
        """``metric`` over the finished cells (derived metrics computed), times ``scale``."""
        values = []
        for cell in self.cells:
            v = m.cell_value(cell.metrics, metric) if cell.done else None
            if v is not None and math.isfinite(v):
                values.append(v * scale)
        return Stat(tuple(values))


def configurations(plan: Plan, without: tuple[str, ...] = ("seed",)) -> list[Config]:
    """Group the plan's cells by their varying fields except ``without``, in plan order.

    When ``student_bn`` or ``teacher_bn`` varies, both are kept in the label (``local/momentum``)
    so every configuration reads as its BN pair.
    """
    from suite.runner.plan import config_label, identifying_fields

    fields = [f for f in plan.fields if f not in without]
    fields = identifying_fields([pc.cell for pc in plan.cells], fields)
    if any(f in fields for f in ("student_bn", "teacher_bn")):
        fields = [f for f in fields if f not in ("student_bn", "teacher_bn")]
        fields += ["student_bn", "teacher_bn"]
    groups: dict[tuple, list[PlannedCell]] = {}
    values_of: dict[tuple, dict[str, Any]] = {}
    for pc in plan.cells:
        flat = pc.cell.flat()
        values = {f: flat[f] for f in fields}
        key = tuple(repr(v) for v in values.values())
        groups.setdefault(key, []).append(pc)
        values_of[key] = values
    return [
        Config(config_label(values_of[k]), values_of[k], tuple(cells))
        for k, cells in groups.items()
    ]


def provenance(plan: Plan) -> list[tuple[str, str]]:
    """``(what, values)`` of the finished runs' environment tags (distinct values joined)."""
    rows = []
    done = [c for c in plan.cells if c.done]
    for tag, what in PROVENANCE_TAGS:
        seen = sorted({c.tags.get(tag, "unknown") for c in done})
        if seen:
            rows.append((what, ", ".join(seen)))
    return rows
