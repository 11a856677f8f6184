"""The text of ``bnsuite check``: one row per entry, one per relation, then the counts."""

from __future__ import annotations

import math

from suite.check.judge import FAIL, CheckResult, EntryResult, RelationResult
from suite.runner.progress import format_table


def number(value: float | None, unit: str) -> str:
    """A value in its unit: percent with 2 decimals, fraction with 4, other values 4 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "percent":
        return f"{value:.2f}"
    if unit == "fraction":
        return f"{value:.4f}"
    return f"{value:.4g}"


def mean_std(result_n: int, mean: float, std: float, unit: str) -> str:
    if result_n == 0:
        return "-"
    if result_n == 1:
        return number(mean, unit)
    return f"{number(mean, unit)} ± {number(std, unit)}"


def bound_text(r: EntryResult) -> str:
    """``88.06 ± 1.00``, ``≥ 0.0412``, ``[0.80, 0.95]``: what the mean must satisfy."""
    e = r.entry
    if not e.judged:
        return "(claim, no number)"
    unit = e.unit
    plain = e.minimum is None and e.maximum is None and e.side == "both"
    if plain and e.expected is not None and e.tolerance is not None:
        return f"{number(e.expected, unit)} ± {number(e.tolerance, unit)}"
    lo, hi = e.bounds()
    if lo is not None and hi is not None:
        return f"[{number(lo, unit)}, {number(hi, unit)}]"
    return f"≥ {number(lo, unit)}" if lo is not None else f"≤ {number(hi, unit)}"


def entry_row(i: int, r: EntryResult) -> list[str]:
    e, stat = r.entry, r.selection.stat
    delta = r.delta
    return [
        f"E{i}",
        e.label,
        e.metric + (" (%)" if e.unit == "percent" else ""),
        f"{stat.n}/{len(r.selection.cells)}",
        mean_std(stat.n, stat.mean, stat.std, e.unit),
        number(e.expected, e.unit),
        bound_text(r),
        "-" if delta is None else ("+" if delta >= 0 else "") + number(delta, e.unit),
        r.verdict,
    ]


def relation_row(i: int, r: RelationResult) -> list[str]:
    s = r.spec
    sides = "-" if r.lhs is None else f"{number(r.lhs, s.unit)} vs {number(r.rhs, s.unit)}"
    n = "+".join(f"{sel.stat.n}" for sel in r.selections.values())
    spread = " (within seed spread)" if r.within_spread else ""
    return [
        f"R{i}",
        s.relation.text,
        s.metric + (" (%)" if s.unit == "percent" else ""),
        n,
        sides + spread,
        r.verdict,
    ]


def render_check(result: CheckResult) -> str:
    """The human-readable report of a check."""
    head = [
        f"check {result.experiment!r} ({result.experiment_path}): "
        f"{result.cells_done} of {result.cells_total} cells finished",
        f"baselines: {', '.join(result.baselines)}",
        f"tracking: {result.tracking_uri}",
        "",
    ]
    parts = []
    if result.entries:
        headers = [
            "#",
            "entry",
            "metric",
            "n",
            "measured",
            "expected",
            "must be",
            "delta",
            "verdict",
        ]
        rows = [entry_row(i, r) for i, r in enumerate(result.entries, 1)]
        parts.append(format_table(headers, rows))
    if result.relations:
        headers = ["#", "relation", "metric", "n", "left vs right", "verdict"]
        rows = [relation_row(i, r) for i, r in enumerate(result.relations, 1)]
        parts.append(format_table(headers, rows))
    counts = result.counts()
    failed = [f"E{i} {r.entry.label}" for i, r in enumerate(result.entries, 1) if r.verdict == FAIL]
    failed += [
        f"R{i} {r.spec.relation.text}"
        for i, r in enumerate(result.relations, 1)
        if r.verdict == FAIL
    ]
    tail = [
        "",
        "",
        f"{counts['pass']} pass, {counts['FAIL']} FAIL, {counts['missing']} missing"
        + (f", {counts['info']} info" if counts["info"] else "")
        + (" (missing allowed)" if result.allow_missing and counts["missing"] else ""),
    ]
    if failed:
        tail.append("failed: " + "; ".join(failed))
    if counts["missing"] and not result.allow_missing:
        tail.append(
            "missing: some selected cells have no finished run; run them "
            f"(bnsuite run {result.experiment_path}) or pass --allow-missing"
        )
    return "\n".join(head) + "\n\n".join(parts) + "\n".join(tail)
