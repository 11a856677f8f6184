"""The text of ``bnsuite check``: one row per entry, one per relation, then the counts.

Every judged row shows the difference it tested, its confidence interval, the p-value of the
claim (and of its opposite) and the verdict; an inconclusive row says how many seeds would
decide it.
"""

from __future__ import annotations

import math

from suite.check.results import (
    FAILED,
    INCONCLUSIVE,
    VERDICTS,
    CheckResult,
    EntryResult,
    RelationResult,
    Test,
)
from suite.runner.progress import format_table


def number(value: float | None, unit: str) -> str:
    """A value in its unit: percent with 2 decimals, fraction with 4, other values 4 digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit == "percent":
        return f"{value:.2f}"
    if unit == "fraction":
        return f"{value:.4f}"
    return f"{value:.4g}"


def signed(value: float | None, unit: str) -> str:
    text = number(value, unit)
    return text if text == "-" or text.startswith("-") else "+" + text


def mean_std(result_n: int, mean: float, std: float, unit: str) -> str:
    if result_n == 0:
        return "-"
    if result_n == 1:
        return number(mean, unit)
    return f"{number(mean, unit)} ± {number(std, unit)}"


def p_text(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def ci_text(test: Test | None, unit: str, *, signed_values: bool = True) -> str:
    """``+0.12 [-1.10, +1.34] (90 %)``: the tested value with its CI."""
    if test is None:
        return "-"
    fmt = signed if signed_values else number
    lo, hi = test.ci
    return f"{fmt(test.estimate.value, unit)} [{fmt(lo, unit)}, {fmt(hi, unit)}]"


def bound_text(r: EntryResult) -> str:
    """What the measurement must satisfy: ``88.06 ± 1.00`` (equivalence), ``≥ 0.0412``
    (a bound), ``≥ 0.0196 (prediction, α 0.0033)`` (a regression), ``(reference)``."""
    e = r.entry
    unit = e.unit
    if not e.judged or r.verdict == "reference":
        return "(reference)"
    if e.kind == "regression":
        sign = "≥" if e.side == "lower" else "≤"
        alpha = f", α {r.alpha:.2g}" if r.alpha is not None else ""
        if r.threshold is None:  # no new run: the bound depends on how many there are
            return f"{sign} prediction bound{alpha}"
        return f"{sign} {number(r.threshold, unit)} (prediction{alpha})"
    if e.kind == "equivalence":
        return f"{number(e.expected, unit)} ± {number(e.tolerance, unit)}"
    lo, hi = e.bounds()
    if lo is not None and hi is not None:
        return f"[{number(lo, unit)}, {number(hi, unit)}]"
    return f"≥ {number(lo, unit)}" if lo is not None else f"≤ {number(hi, unit)}"


def entry_row(i: int, r: EntryResult) -> list[str]:
    e, stat = r.entry, r.selection.stat
    kind_is_mean = e.kind == "bound" and r.verdict != "reference"
    return [
        f"E{i}",
        e.label,
        e.metric + (" (%)" if e.unit == "percent" else ""),
        f"{stat.n}/{len(r.selection.cells)}",
        mean_std(stat.n, stat.mean, stat.std, e.unit),
        number(e.compared_to, e.unit),
        bound_text(r),
        ci_text(r.test, e.unit, signed_values=not kind_is_mean),
        p_text(r.test.p if r.test else None),
        p_text(r.test.p_other if r.test else None),
        r.verdict + (" (another protocol)" if e.protocol_differs else ""),
    ]


ENTRY_HEADERS = [
    "#",
    "entry",
    "metric",
    "n",
    "measured",
    "expected",
    "must be",
    "tested value [CI]",
    "p",
    "p against",
    "verdict",
]


def relation_row(i: int, r: RelationResult) -> list[str]:
    s = r.spec
    n = "+".join(f"{sel.stat.n}" for sel in r.selections.values())
    claim = s.relation.text + (f" (±{number(s.margin, s.unit)})" if s.margin is not None else "")
    return [
        f"R{i}",
        claim,
        s.metric + (" (%)" if s.unit == "percent" else ""),
        n,
        r.pairing or "-",
        ci_text(r.test, s.unit),
        p_text(r.p_adjusted),
        p_text(r.p_other_adjusted),
        r.verdict,
    ]


RELATION_HEADERS = [
    "#",
    "relation",
    "metric",
    "n",
    "pairing",
    "left − right [CI]",
    "p (Holm)",
    "p against (Holm)",
    "verdict",
]


def summary_line(result: CheckResult) -> str:
    """``2 reproduced, 1 pass, 0 FAIL, 1 inconclusive, 0 missing, 3 reference``: every verdict
    that occurs, and FAIL and missing always."""
    counts = result.counts()
    shown = [v for v in VERDICTS if counts[v] or v in ("FAIL", "missing")]
    return ", ".join(f"{counts[v]} {v}" for v in shown)


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
        rows = [entry_row(i, r) for i, r in enumerate(result.entries, 1)]
        parts.append(format_table(ENTRY_HEADERS, rows))
    if result.relations:
        rows = [relation_row(i, r) for i, r in enumerate(result.relations, 1)]
        parts.append(format_table(RELATION_HEADERS, rows))
    counts = result.counts()
    tagged = [(f"E{i} {r.entry.label}", r) for i, r in enumerate(result.entries, 1)]
    tagged += [(f"R{i} {r.spec.relation.text}", r) for i, r in enumerate(result.relations, 1)]
    failed = [name for name, r in tagged if r.verdict in FAILED]
    open_ = [
        f"{name}{f' ({r.reason})' if r.reason else ''}"
        for name, r in tagged
        if r.verdict == INCONCLUSIVE
    ]
    tail = [
        "",
        "",
        "CI: the 1 − 2α interval (90 % at α 0.05) whose ends are the one-sided tests; p: of the "
        "claim; p against: of its opposite (a FAIL or a contradiction).",
        summary_line(result)
        + (" (missing allowed)" if result.allow_missing and counts["missing"] else ""),
    ]
    if failed:
        tail.append("failed: " + "; ".join(failed))
    if open_:
        tail.append(
            "inconclusive: "
            + "; ".join(open_)
            + (" — exit 1 under --strict" if not result.strict else "")
        )
    if counts["missing"] and not result.allow_missing:
        tail.append(
            "missing: some selected cells have no finished run that logged the metric (not run "
            f"yet, failed, or the metric absent); run them (bnsuite run {result.experiment_path}) "
            "or pass --allow-missing"
        )
    return "\n".join(head) + "\n\n".join(parts) + "\n".join(tail)
