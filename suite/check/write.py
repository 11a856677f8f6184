"""``bnsuite check … --write-baseline FILE``: regression thresholds from measured runs.

Updating a baseline is an explicit step, never a side effect of a check. For each group of cells
that differ only in their seed, and each chosen metric, the entry written is::

    expected  = mean over the group's seeds
    tolerance = max(floor, k · std)          (sample std over the seeds; k = 3 by default)
    side      = lower when a larger value is better (accuracies, gains, images/s), else upper

so ``check`` fails when a later run is worse than the measured mean by more than the tolerance,
and never because a run got better. ``floor`` (default: 0.01 for accuracies, i.e. one point; 10 %
of the mean for other metrics) keeps a lucky low-spread measurement from making the gate flaky.
The measured values (n, mean, std, min, max, seeds) are written beside each entry. The
section's defaults and relations are kept, and so are other experiments' sections.
"""

from __future__ import annotations

import datetime as _dt
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from suite.check import metrics as m

if TYPE_CHECKING:
    from suite.runner.plan import Plan

DEFAULT_METRICS = ("knn/top1_gain", "knn/top1")
DEFAULT_K = 3.0
DEFAULT_ACCURACY_FLOOR = 0.01
DEFAULT_RELATIVE_FLOOR = 0.10


@dataclass(frozen=True)
class Rule:
    """``tolerance = max(floor, k · std)``; ``floor`` None: the per-kind default."""

    k: float = DEFAULT_K
    floor: float | None = None

    def floor_for(self, metric: str, mean: float) -> float:
        if self.floor is not None:
            return self.floor
        return (
            DEFAULT_ACCURACY_FLOOR if m.is_accuracy(metric) else DEFAULT_RELATIVE_FLOOR * abs(mean)
        )

    def describe(self) -> str:
        floor = (
            f"{self.floor:g}"
            if self.floor is not None
            else f"{DEFAULT_ACCURACY_FLOOR:g} for accuracies, {DEFAULT_RELATIVE_FLOOR:.0%} of the "
            "mean for other metrics"
        )
        return f"tolerance = max(floor, {self.k:g} x std over seeds), floor = {floor}"


def group_cells(plan: Plan) -> list[tuple[str, dict[str, Any], list[int]]]:
    """Cells that differ only in ``seed``: (label, match with experiment keys, plan indices).

    The match names the fewest varying fields that tell the groups apart
    (:func:`~suite.runner.plan.identifying_fields`), by their keys (a field's path; ``method`` for
    ``method.name``)."""
    from suite.runner.plan import config_label, identifying_fields

    fields = [f for f in plan.fields if f != "seed"]
    fields = identifying_fields([pc.cell for pc in plan.cells], fields)
    groups: dict[tuple, tuple[str, dict[str, Any], list[int]]] = {}
    for i, pc in enumerate(plan.cells):
        flat = pc.cell.flat()
        values = {f: flat[f] for f in fields}
        match = {("method" if f == "method.name" else f): v for f, v in values.items()}
        key = tuple(repr(v) for v in values.values())
        named = dict(values)
        if "student_bn" in named or "teacher_bn" in named:  # name the pair whole
            named.update(student_bn=flat["student_bn"], teacher_bn=flat["teacher_bn"])
        groups.setdefault(key, (config_label(named), match, []))[2].append(i)
    return list(groups.values())


def measured_entries(
    plan: Plan, metrics: Sequence[str], rule: Rule
) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries to write, and warnings (groups with too few values to have a spread)."""
    from suite.check.judge import cell_metric

    entries: list[dict[str, Any]] = []
    warnings: list[str] = []
    for label, match, indices in group_cells(plan):
        cells = [plan.cells[i] for i in indices]
        for metric in metrics:
            pairs = [(pc.cell.seed, cell_metric(pc, metric)) for pc in cells]
            values = [v for _, v in pairs if v is not None]
            if len(values) < len(cells):
                warnings.append(
                    f"{label}: {metric}: {len(cells) - len(values)} of {len(cells)} cells have "
                    "no finished run with this metric; written from the others"
                )
            if not values:
                continue
            if len(values) < 5:
                warnings.append(
                    f"{label}: {metric}: only {len(values)} value(s); a spread from fewer than 5 "
                    "seeds is unreliable (run more with --seeds)"
                )
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            tolerance = max(rule.floor_for(metric, mean), rule.k * std)
            entry: dict[str, Any] = {"name": f"{label}: {metric}"}
            if match:
                entry["match"] = dict(match)
            entry.update(
                metric=metric,
                # the unit the values are written in, stated per entry: a section default (e.g.
                # `unit: percent` for a paper's numbers) must never reinterpret them
                unit=m.default_unit(metric),
                expected=_round(mean),
                tolerance=_round(tolerance),
                side="lower" if m.higher_is_better(metric) else "upper",
                measured={
                    "n": len(values),
                    "mean": _round(mean),
                    "std": _round(std),
                    "min": _round(min(values)),
                    "max": _round(max(values)),
                    "seeds": [s for s, v in pairs if v is not None],
                },
            )
            entries.append(entry)
    return entries, warnings


class _PlainDumper(yaml.SafeDumper):
    """``safe_dump`` without anchors and aliases (``&id001``): every entry reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def write_baseline(
    file: str | Path,
    plan: Plan,
    metrics: Sequence[str] = DEFAULT_METRICS,
    rule: Rule = Rule(),
    command: str = "",
) -> list[str]:
    """Write (or rewrite) ``file``'s section for ``plan``'s experiment; return the warnings."""
    from suite.check.baseline import load_baselines

    path = Path(file)
    entries, warnings = measured_entries(plan, metrics, rule)
    if not entries:
        raise ValueError(
            f"no finished run of experiment {plan.name!r} carries {', '.join(metrics)}; "
            "nothing to write (run the cells first)"
        )
    sections: dict[str, Any] = {}
    description = ""
    if path.exists():
        load_baselines(path)  # a broken file is reported, not overwritten
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        description = raw.get("description", "")
        sections = dict(raw.get("experiments") or {})
    old = sections.get(plan.name) or {}
    section = {k: v for k, v in old.items() if k not in ("entries", "relations")}
    section["entries"] = entries  # the section's defaults and relations are kept as they were
    if old.get("relations"):
        section["relations"] = old["relations"]
    sections[plan.name] = section
    done = sum(c.done for c in plan.cells)
    head = [
        "# Regression thresholds measured from finished runs (bnsuite check --write-baseline).",
        f"# Written {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {done} finished "
        f"cells of experiment {plan.name!r}",
        f"# (tracking: {plan.tracking_uri}).",
    ]
    if command:
        head.append(f"# Command: {command}")
    head += [
        f"# Rule: expected = mean over seeds; {rule.describe()};",
        "# side lower = a regression is a smaller value (larger is better), upper = the reverse.",
        "# Regenerate with the command above; do not edit thresholds by hand.",
    ]
    body: dict[str, Any] = {}
    if description:
        body["description"] = description
    body["experiments"] = sections
    text = "\n".join(head) + "\n" + yaml.dump(body, Dumper=_PlainDumper, sort_keys=False, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    load_baselines(path)  # what was written must read back
    return warnings
