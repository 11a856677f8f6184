"""Judge an experiment's recorded runs against its baselines: one verdict per entry and relation.

For each entry the cells it selects are found in the plan (an entry that selects no planned cell
is a :class:`~suite.check.baseline.BaselineError`: a typo must not pass as "missing"); each cell
contributes the metric of its latest FINISHED run; the values are averaged (mean, sample std,
n). Verdicts:

- ``pass``: the mean lies within the entry's bounds (``expected ± tolerance`` on the entry's
  side, and ``min`` / ``max``); a relation holds on the group means;
- ``FAIL``: it does not;
- ``missing``: a selected cell has no finished run carrying the metric; with ``allow_missing``
  an entry or relation is judged on the cells that have one and is ``missing`` only when none
  has;
- ``info``: a claim kept without a number (``expected: null``), never judged.

Exit code of a check: 0 when nothing FAILed and nothing is missing (missing allowed with
``allow_missing``), else 1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from suite.check import metrics as m
from suite.check.baseline import Baseline, BaselineError, Entry, RelationSpec
from suite.config.schema import Layer

if TYPE_CHECKING:
    from suite.runner.plan import Plan, PlannedCell

PASS, FAIL, MISSING, INFO = "pass", "FAIL", "missing", "info"


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one value) and count of per-cell values."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0


@dataclass(frozen=True)
class Selection:
    """The cells a match selects and the metric values of those that have one (in unit)."""

    cells: tuple[str, ...]  # cell ids, plan order
    values: dict[str, float]  # cell id -> value, for the cells with a finished run and metric

    @property
    def stat(self) -> Stat:
        return Stat(tuple(self.values[c] for c in self.cells if c in self.values))

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(c for c in self.cells if c not in self.values)


@dataclass(frozen=True)
class EntryResult:
    entry: Entry
    selection: Selection
    verdict: str

    @property
    def delta(self) -> float | None:
        """Measured mean minus expected (None without both)."""
        stat = self.selection.stat
        if self.entry.expected is None or stat.n == 0:
            return None
        return stat.mean - self.entry.expected

    def to_json(self) -> dict[str, Any]:
        e, stat = self.entry, self.selection.stat
        lo, hi = e.bounds()
        return {
            "where": e.where,
            "label": e.label,
            "match": e.match_text,
            "metric": e.metric,
            "unit": e.unit,
            "cells": list(self.selection.cells),
            "missing_cells": list(self.selection.missing),
            "n": stat.n,
            "values": list(stat.values),
            "mean": _finite(stat.mean),
            "std": stat.std if stat.n else None,
            "expected": e.expected,
            "tolerance": e.tolerance,
            "side": e.side,
            "min": lo,
            "max": hi,
            "delta": self.delta,
            "reference": e.reference,
            "verdict": self.verdict,
            "source": e.source,
            "protocol": e.protocol,
            "note": e.note,
        }


@dataclass(frozen=True)
class RelationResult:
    spec: RelationSpec
    selections: dict[str, Selection]
    verdict: str
    lhs: float | None = None
    rhs: float | None = None

    @property
    def within_spread(self) -> bool | None:
        """True when the two sides differ by less than the groups' combined seed spread
        (root of the summed variances of the group means' seeds): the ordering is not resolved
        by these seeds, whatever the verdict. None when no group has more than one value."""
        if self.lhs is None or self.rhs is None:
            return None
        stats = [s.stat for s in self.selections.values()]
        if not any(s.n > 1 for s in stats):
            return None
        spread = math.sqrt(sum(s.std**2 for s in stats))
        return abs(self.lhs - self.rhs) < spread

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "where": s.where,
            "label": s.label,
            "relation": s.relation.text,
            "metric": s.metric,
            "unit": s.unit,
            "groups": {
                name: {
                    "match": s.group_text[name],
                    "cells": list(sel.cells),
                    "missing_cells": list(sel.missing),
                    "n": sel.stat.n,
                    "mean": _finite(sel.stat.mean),
                    "std": sel.stat.std if sel.stat.n else None,
                }
                for name, sel in self.selections.items()
            },
            "lhs": self.lhs,
            "rhs": self.rhs,
            "within_seed_spread": self.within_spread,
            "verdict": self.verdict,
            "source": s.source,
            "note": s.note,
        }


@dataclass(frozen=True)
class CheckResult:
    """Every verdict of one experiment against its baselines."""

    experiment: str
    experiment_path: str
    tracking_uri: str
    baselines: tuple[str, ...]
    entries: tuple[EntryResult, ...]
    relations: tuple[RelationResult, ...]
    allow_missing: bool = False
    cells_total: int = 0
    cells_done: int = 0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, MISSING: 0, INFO: 0}
        for r in (*self.entries, *self.relations):
            out[r.verdict] += 1
        return out

    @property
    def exit_code(self) -> int:
        counts = self.counts()
        if counts[FAIL] or (counts[MISSING] and not self.allow_missing):
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "experiment_file": self.experiment_path,
            "tracking_uri": self.tracking_uri,
            "baselines": list(self.baselines),
            "cells": {"total": self.cells_total, "finished": self.cells_done},
            "entries": [r.to_json() for r in self.entries],
            "relations": [r.to_json() for r in self.relations],
            "counts": self.counts(),
            "allow_missing": self.allow_missing,
            "exit_code": self.exit_code,
        }


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _get(tree: Mapping[str, Any], target: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in target:
        node = node[key]
    return node


def matches(cell_tree: Mapping[str, Any], layer: Layer) -> bool:
    """Whether a cell (``CellConfig.to_dict()``) has every value of ``layer``."""
    return all(_get(cell_tree, target) == value for target, value in layer.items())


def select(
    plan: Plan, layer: Layer, metric: str, unit: str, trees: Sequence[Mapping[str, Any]]
) -> Selection:
    """The cells of ``plan`` that ``layer`` selects, with their ``metric`` in ``unit``."""
    scale = m.UNITS[unit]
    cells: list[str] = []
    values: dict[str, float] = {}
    for planned, tree in zip(plan.cells, trees, strict=True):
        if not matches(tree, layer):
            continue
        cells.append(planned.cell_id)
        value = cell_metric(planned, metric)
        if value is not None and math.isfinite(value):
            values[planned.cell_id] = value * scale
    return Selection(tuple(cells), values)


def cell_metric(planned: PlannedCell, metric: str) -> float | None:
    """``metric`` of a planned cell's finished run (None if not done or not logged)."""
    return m.cell_value(planned.metrics, metric) if planned.done else None


def _verdict(selection: Selection, allow_missing: bool) -> str | None:
    """MISSING when the selection cannot be judged, else None (judge it)."""
    stat = selection.stat
    if stat.n == 0 or (selection.missing and not allow_missing):
        return MISSING
    return None


def judge_entry(entry: Entry, selection: Selection, allow_missing: bool) -> EntryResult:
    if not entry.judged:
        return EntryResult(entry, selection, INFO)
    verdict = _verdict(selection, allow_missing)
    if verdict is None:
        mean = selection.stat.mean
        lo, hi = entry.bounds()
        ok = (lo is None or mean >= lo - 1e-12) and (hi is None or mean <= hi + 1e-12)
        verdict = PASS if ok else FAIL
    return EntryResult(entry, selection, verdict)


def judge_relation(
    spec: RelationSpec, selections: dict[str, Selection], allow_missing: bool
) -> RelationResult:
    for sel in selections.values():
        if _verdict(sel, allow_missing) == MISSING:
            return RelationResult(spec, selections, MISSING)
    means = {name: sel.stat.mean for name, sel in selections.items()}
    lhs, rhs, holds = spec.relation.evaluate(means)
    return RelationResult(spec, selections, PASS if holds else FAIL, lhs, rhs)


def check_plan(
    plan: Plan, baselines: Sequence[Baseline], *, allow_missing: bool = False
) -> CheckResult:
    """Every entry and relation of ``baselines`` judged on ``plan``'s finished runs.

    Raises :class:`BaselineError` (all problems at once) for an entry or a relation group that
    selects no cell of the plan.
    """
    trees = [pc.cell.to_dict() for pc in plan.cells]
    errors: list[str] = []
    entries: list[EntryResult] = []
    relations: list[RelationResult] = []
    for baseline in baselines:
        for entry in baseline.entries:
            sel = select(plan, entry.match, entry.metric, entry.unit, trees)
            if not sel.cells:
                errors.append(f"{entry.where}.match: {entry.match_text} {_no_cell(plan)}")
                continue
            entries.append(judge_entry(entry, sel, allow_missing))
        for spec in baseline.relations:
            sels = {
                name: select(plan, layer, spec.metric, spec.unit, trees)
                for name, layer in spec.groups.items()
            }
            empty = [name for name, sel in sels.items() if not sel.cells]
            for name in empty:
                errors.append(
                    f"{spec.where}: group {name!r} ({spec.group_text[name]}) {_no_cell(plan)}"
                )
            if not empty:
                relations.append(judge_relation(spec, sels, allow_missing))
    if errors:
        raise BaselineError(errors)
    return CheckResult(
        experiment=plan.name,
        experiment_path=str(plan.experiment.path),
        tracking_uri=plan.tracking_uri,
        baselines=tuple(dict.fromkeys(str(b.file) for b in baselines)),
        entries=tuple(entries),
        relations=tuple(relations),
        allow_missing=allow_missing,
        cells_total=len(plan.cells),
        cells_done=sum(c.done for c in plan.cells),
    )


def _no_cell(plan: Plan) -> str:
    return (
        f"selects no cell of experiment {plan.name!r} ({len(plan.cells)} cells; "
        f"`bnsuite plan {plan.experiment.path}` lists their values)"
    )
