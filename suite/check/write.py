"""``bnsuite check … --write-baseline FILE``: regression thresholds from measured runs.

Updating a baseline is an explicit step, never a side effect of a check. For each group of cells
that differ only in their seed, and each chosen metric, the entry written is a ``regression``
entry holding the measured noise model — n, mean, sd (and df = n − 1), min, max, seeds — on the
regression side only (``lower`` for accuracies, gains and images/s, ``upper`` for times, memory
and losses). ``check`` derives the threshold from it: a prediction bound for the mean of the m
new runs, ``mean ∓ t(1 − α_e, n − 1) · sd · √(1/m + 1/n)``, with ``α_e`` the section's
``false_alarm`` (family-wise, default 2 %) split over its regression entries (Bonferroni). So a
fresh correct run of the same code fails the whole gate with probability at most
``false_alarm``, whatever the correlation between entries. The header states that rate, the
per-entry level and, per entry, the smallest regression caught with 90 % power by one new run.
The section's other keys and relations, and other experiments' sections, are kept.
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
from suite.check import stats as st
from suite.check.baseline import DEFAULT_FALSE_ALARM

if TYPE_CHECKING:
    from suite.runner.plan import Plan

DEFAULT_METRICS = ("linear/top1_gain", "train/loss_final")
MIN_SEEDS = 5  # fewer gives a warning: t with < 4 df makes the bound very wide
POWER = 0.9


@dataclass(frozen=True)
class Rule:
    """The gate's family-wise false-alarm rate for one fresh correct run."""

    false_alarm: float = DEFAULT_FALSE_ALARM
    new_runs: int = 1  # seeds per cell the gate judges (for the stated power only)

    def describe(self, entries: int) -> str:
        each = self.false_alarm / max(1, entries)
        return (
            f"threshold = prediction bound mean -/+ t(1 - a, n - 1) * sd * sqrt(1/m + 1/n) for "
            f"the mean of m new runs; a = false_alarm / entries = {self.false_alarm:g} / "
            f"{entries} = {each:.3g} per entry, so a fresh correct run fails the gate with "
            f"probability <= {self.false_alarm:g} (Bonferroni; "
            f"{st.family_rate(each, entries):.3g} if the entries were independent)"
        )


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


def measured_entries(plan: Plan, metrics: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
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
            if len(values) < 2:
                warnings.append(
                    f"{label}: {metric}: {len(values)} value(s); a regression threshold needs "
                    "the spread of two or more seeds: not written (run more with --seeds)"
                )
                continue
            if len(values) < MIN_SEEDS:
                warnings.append(
                    f"{label}: {metric}: only {len(values)} values; with fewer than "
                    f"{MIN_SEEDS} seeds the prediction bound is very wide (run more with --seeds)"
                )
            mean = statistics.fmean(values)
            std = statistics.stdev(values)
            entry: dict[str, Any] = {"name": f"{label}: {metric}", "kind": "regression"}
            if match:
                entry["match"] = dict(match)
            entry.update(
                metric=metric,
                # the unit the values are written in, stated per entry: a section default (e.g.
                # `unit: percent` for a paper's numbers) must never reinterpret them
                unit=m.default_unit(metric),
                expected=_round(mean),
                side="lower" if m.higher_is_better(metric) else "upper",
                measured={
                    "n": len(values),
                    "mean": _round(mean),
                    "std": _round(std),
                    "df": len(values) - 1,
                    "min": _round(min(values)),
                    "max": _round(max(values)),
                    "seeds": [s for s, v in pairs if v is not None],
                },
            )
            entries.append(entry)
    return entries, warnings


def gate_statement(entries: Sequence[dict[str, Any]], rule: Rule, m_new: int = 1) -> list[str]:
    """Header lines: the rule, the family-wise false-alarm rate, and per entry the threshold and
    the smallest regression one new run (``m_new`` per cell) is caught at with 90 % power."""
    each = rule.false_alarm / max(1, len(entries))
    lines = [f"# Rule: {rule.describe(len(entries))}."]
    lines.append(
        f"# Per entry, for {m_new} new run(s) per cell: threshold, and the smallest true shift "
        f"caught with {POWER:.0%} power:"
    )
    for e in entries:
        meas = e["measured"]
        bound = st.prediction_bound(meas["mean"], meas["std"], meas["n"], m_new, each, e["side"])
        shift = st.detectable_shift(meas["std"], meas["n"], m_new, each, POWER)
        sign = ">=" if e["side"] == "lower" else "<="
        lines.append(
            f"#   {e['name']}: {meas['mean']:.4g} +- {meas['std']:.3g} (n {meas['n']}) -> "
            f"{sign} {bound:.4g}; detects a shift of {shift:.3g} ({shift / meas['std']:.1f} sd)"
        )
    return lines


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
    if path.exists():
        load_baselines(path)  # a broken file is reported, not overwritten
    entries, warnings = measured_entries(plan, metrics)
    if not entries:
        raise ValueError(
            f"no finished run of experiment {plan.name!r} carries {', '.join(metrics)}; "
            "nothing to write (run the cells first)"
        )
    sections: dict[str, Any] = {}
    description = ""
    if path.exists():
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        description = raw.get("description", "")
        sections = dict(raw.get("experiments") or {})
    old = sections.get(plan.name) or {}
    section = {k: v for k, v in old.items() if k not in ("entries", "relations", "false_alarm")}
    section["false_alarm"] = rule.false_alarm
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
    head += gate_statement(entries, rule, rule.new_runs)
    head += [
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
