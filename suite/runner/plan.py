"""The plan of an experiment: its cells (in expanded order), their ids, the axes that vary across
the matrix, and which cells the tracking store already holds a FINISHED run for.

``bnsuite plan`` prints it; ``bnsuite run`` trains its pending cells. A cell is *done* when the
store has at least one FINISHED run tagged with its id, and *pending* otherwise; for a pending
cell the status of its latest run (FAILED, KILLED, RUNNING) is shown beside it.

``--shard K/N``: a deterministic share of the cells for one of N machines. Shards are numbered
from 1: ``1/4`` … ``4/4``. Cell ``i`` (0-based, in the experiment's expanded order, as ``bnsuite
plan`` numbers them) belongs to shard ``K = (i mod N) + 1`` — round robin, so the shards differ in
size by at most one cell and neighbouring cells (often the seeds of one configuration) spread over
the machines. The assignment depends on the file only: every machine computes the same split.
Editing the matrix may move cells between shards; cells already FINISHED are skipped wherever
they land, so re-sharding never trains a finished cell twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from suite.runner.progress import format_table, percent, rate

if TYPE_CHECKING:
    from suite.cell import CellConfig
    from suite.config import Experiment

HIDDEN_FIELDS = ("experiment",)
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


# -- shards ------------------------------------------------------------------------------------
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int = 1
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, position: int) -> bool:
        """Cell number ``position`` (0-based) is in this shard: ``position mod N = K − 1``."""
        return position % self.count == self.index - 1

    def select(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """``(position, item)`` for this shard's items, in order."""
        return [(i, item) for i, item in enumerate(items) if self.owns(i)]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` with integers ``N >= 1`` and ``1 <= K <= N``; ValueError naming the rule."""
    match = _SHARD.match(str(text))
    if match is None:
        raise ValueError(
            f"{text!r} is not of the form K/N (shard K of N, numbered from 1, e.g. 1/2 and 2/2)"
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"{text!r} has N = {count}; N must be at least 1")
    if not 1 <= index <= count:
        raise ValueError(
            f"{text!r} has K = {index}; shards are numbered from 1, so K must be in "
            f"1..{count} (e.g. 1/{count} … {count}/{count})"
        )
    return Shard(index, count)


@dataclass(frozen=True)
class PlannedCell:
    """One cell of the plan. ``position``: its 0-based index in the expanded order."""

    position: int
    cell: CellConfig
    axes: dict[str, Any]
    done: bool
    last_status: str | None = None  # status of the latest run when not FINISHED
    metrics: dict[str, float] = field(default_factory=dict)  # of the FINISHED run, when done
    run_id: str | None = None  # the latest FINISHED run, when done
    tags: dict[str, str] = field(default_factory=dict)  # of that run (versions, commit, device)

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def label(self) -> str:
        """``seed=0, student_bn=local``: the values of the varying fields."""
        return ", ".join(f"{k}={v}" for k, v in self.axes.items())

    @property
    def state(self) -> str:
        if self.done:
            return "done"
        return f"pending (last run {self.last_status})" if self.last_status else "pending"


@dataclass(frozen=True)
class Plan:
    """The cells of one experiment file (this shard's only), and where they are tracked."""

    experiment: Experiment
    tracking_uri: str
    shard: Shard
    fields: tuple[str, ...]  # varying fields across the whole matrix (the axes columns)
    total: int  # cells in the whole matrix
    cells: tuple[PlannedCell, ...]

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def pending(self) -> list[PlannedCell]:
        return [c for c in self.cells if not c.done]


def varying_fields(cells: list[CellConfig]) -> list[str]:
    """The flat (dotted, MLflow-param) fields whose value differs between at least two cells;
    an ``aug.*`` field only where it differs between two cells of one method (a difference that
    only follows the method's recipe is shown by ``method.name``)."""
    flats = [c.flat() for c in cells]
    if len(flats) < 2:
        return []

    def varies(key: str) -> bool:
        if not key.startswith("aug."):
            return any(f.get(key) != flats[0][key] for f in flats[1:])
        seen: dict[Any, Any] = {}
        for f in flats:
            first = seen.setdefault(f["method.name"], f.get(key))
            if f.get(key) != first:
                return True
        return False

    return [key for key in flats[0] if key not in HIDDEN_FIELDS and varies(key)]


#: fields that name a configuration best, tried first by :func:`identifying_fields`
NAMING_FIELDS = ("method.name", "student_bn", "teacher_bn", "batch_size", "devices")


def identifying_fields(cells: list[CellConfig], fields: list[str]) -> list[str]:
    """The fewest of ``fields`` (greedy, :data:`NAMING_FIELDS` first) that tell apart every
    combination of ``fields`` the cells take: ``method.pred_hidden`` is left out when it only
    follows ``method.name``. Returned in the order of ``fields``."""
    flats = [c.flat() for c in cells]
    target = len({tuple(repr(f[k]) for k in fields) for f in flats})
    ordered = [f for f in NAMING_FIELDS if f in fields] + [
        f for f in fields if f not in NAMING_FIELDS
    ]
    chosen: list[str] = []
    distinct = 1
    for name in ordered:
        if distinct >= target:
            break
        trial = chosen + [name]
        count = len({tuple(repr(f[k]) for k in trial) for f in flats})
        if count > distinct:
            chosen, distinct = trial, count
    return [f for f in fields if f in chosen]


def config_label(values: dict[str, Any]) -> str:
    """``byol local/momentum batch_size=32``: a configuration named by its flat field values
    (method, then the student/teacher BN pair, then the rest as ``key=value``)."""
    rest = dict(values)
    parts = []
    if "method.name" in rest:
        parts.append(str(rest.pop("method.name")))
    if "student_bn" in rest or "teacher_bn" in rest:
        s, t = rest.pop("student_bn", None), rest.pop("teacher_bn", None)
        parts.append(f"{s or '·'}/{t or '·'}")
    parts += [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in rest.items()]
    return " ".join(parts) or "all cells"


def folder_name(experiment: str) -> str:
    """The experiment name as one folder name: characters other than letters, digits, ``.``,
    ``-``, ``_`` replaced by ``_``, leading and trailing dots and underscores removed, so that no
    name (``../../x``, ``/abs``) leads out of the folder it is joined to."""
    return re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"


def cell_folder(workdir: Path | str, experiment: str, cell_id: str) -> Path:
    """``<workdir>/<experiment>/<cell_id>``: the cell's stable checkpoint and log folder (the
    experiment name as :func:`folder_name`)."""
    return Path(workdir) / folder_name(experiment) / cell_id


def build_plan(experiment: Experiment, tracking_uri: str, shard: Shard | None = None) -> Plan:
    """Read the store (without creating anything in it) and mark this shard's cells done/pending."""
    from suite.tracking import read_runs

    shard = shard or Shard()
    all_cells = experiment.cells()
    fields = varying_fields(all_cells)
    finished: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    for row in read_runs(tracking_uri, experiment.name, status=None):  # oldest first
        cid = row["cell_id"]
        if not cid:
            continue
        latest[cid] = row
        if row["status"] == "FINISHED":
            finished[cid] = row
    planned = []
    for position, cell in shard.select(all_cells):
        flat = cell.flat()
        cid = cell.cell_id
        last = latest.get(cid)
        planned.append(
            PlannedCell(
                position=position,
                cell=cell,
                axes={k: flat[k] for k in fields},
                done=cid in finished,
                last_status=last["status"] if last and cid not in finished else None,
                metrics=dict(finished[cid]["metrics"]) if cid in finished else {},
                run_id=finished[cid]["run_id"] if cid in finished else None,
                tags=dict(finished[cid]["tags"]) if cid in finished else {},
            )
        )
    return Plan(experiment, tracking_uri, shard, tuple(fields), len(all_cells), tuple(planned))


def render_plan(plan: Plan, running: set[str] | None = None) -> str:
    """The text of ``bnsuite plan``: a header, then one row per cell (``#`` = position)."""
    running = running or set()
    done = sum(c.done for c in plan.cells)
    scope = (
        f"{len(plan.cells)} cells"
        if plan.shard.count == 1
        else (f"shard {plan.shard}: {len(plan.cells)} of {plan.total} cells")
    )
    head = [
        f"experiment {plan.name!r} ({plan.experiment.path}): {scope}, {done} done, "
        f"{len(plan.cells) - done} pending",
        f"tracking: {plan.tracking_uri}",
        "",
    ]
    headers = ["#", "cell_id", *plan.fields, "status", "kNN top-1 %", "linear top-1 %", "img/s"]
    rows = []
    for c in plan.cells:
        state = "running (locked)" if c.cell_id in running and not c.done else c.state
        rows.append(
            [
                c.position,
                c.cell_id,
                *c.axes.values(),
                state,
                percent(c.metrics.get("knn/top1")),
                percent(c.metrics.get("linear/top1")),
                rate(c.metrics.get("images_per_s")),
            ]
        )
    return "\n".join(head) + format_table(headers, rows)


def plan_json(plan: Plan, running: set[str] | None = None) -> dict[str, Any]:
    """``bnsuite plan --json``: the plan as data, for scripts that join plans with runs.

    ``cells[i]``: ``position``, ``cell_id``, ``axes`` (the varying fields), ``values`` (every
    resolved field, dotted as recorded in MLflow params), ``status`` (``done``, ``pending`` or
    ``running``), ``last_status`` (of the latest run when not done) and ``metrics`` (of the
    finished run).
    """
    running = running or set()
    cells = []
    for c in plan.cells:
        status = "done" if c.done else ("running" if c.cell_id in running else "pending")
        cells.append(
            {
                "position": c.position,
                "cell_id": c.cell_id,
                "axes": c.axes,
                "values": c.cell.flat(),
                "status": status,
                "last_status": c.last_status,
                "metrics": c.metrics,
            }
        )
    return {
        "experiment": plan.name,
        "file": str(plan.experiment.path),
        "tracking_uri": plan.tracking_uri,
        "shard": str(plan.shard),
        "total": plan.total,
        "fields": list(plan.fields),
        "cells": cells,
    }
