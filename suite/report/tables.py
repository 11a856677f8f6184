"""The report's tables and verdict texts: paper vs measured (the check's rows), relations, every
configuration beside its floor, and the lines that say what was not reproduced or not decided.

Rows and numbers are :mod:`suite.check.render`'s, so the report and ``bnsuite check`` print the
same tested value, CI and p for every verdict (and number entries E1…, relations R1… alike).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from suite.check.render import (
    ENTRY_HEADERS,
    RELATION_HEADERS,
    bound_text,
    entry_row,
    mean_std,
    number,
    p_text,
    relation_row,
    signed,
)
from suite.check.results import (
    CONTRADICTED,
    FAIL,
    INCONCLUSIVE,
    CheckResult,
    EntryResult,
    RelationResult,
    Test,
)
from suite.report.data import Config


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

        return "\n".join(
            [line(self.headers), "|" + "---|" * len(self.headers), *(line(r) for r in self.rows)]
        )

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class Bullets:
    """A list of lines (Markdown ``- ``, HTML ``<ul>``)."""

    items: Sequence[str]

    def markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in self.items) + "</ul>"


def verdict_table(result: CheckResult) -> Table:
    """Paper vs measured: the check's row per entry (the tested value, its CI, p, verdict) and
    the source; a ``reference`` column when an entry carries one. A reference row (not judged)
    shows its difference and CI but no p: it tests no claim (the check gives it none)."""
    references = any(r.entry.reference is not None for r in result.entries)
    headers = [*ENTRY_HEADERS, "source"]
    if references:
        headers.insert(5, "reference")
    rows = []
    for i, r in enumerate(result.entries, 1):
        e = r.entry
        row = [*entry_row(i, r), e.source or "-"]
        if references:
            row.insert(5, number(e.reference, e.unit))
        rows.append(row)
    return Table(headers, rows)


def relation_table(result: CheckResult) -> Table:
    rows = [[*relation_row(i, r), r.spec.note or "-"] for i, r in enumerate(result.relations, 1)]
    return Table([*RELATION_HEADERS, "note"], rows)


def level_text(level: float) -> str:
    """``90 %``, ``99.33 %``."""
    return f"{100 * level:.4g} %"


def entry_ci_note(result: CheckResult) -> str:
    """The CI level(s) of the entry table, said once: ``90 %`` for every row, or per kind when
    they differ (a regression row's CI is at ``1 − 2α`` of its Bonferroni share)."""
    levels = _levels((r.entry.kind, r.test) for r in result.entries)
    if not levels:
        return ""
    said = _said(levels)
    return (
        f"tested value [CI]: the {said} confidence interval (1 − 2α: each end is a one-sided "
        "test at α); an equivalence, reference or regression row shows measured − the expected "
        "number, a bound row the mean itself. p: of the row's claim (reproduced, within the "
        "bound; none for a regression row, whose claim, no regression, is the null hypothesis); "
        "p against: of the opposite (for a regression row, of a shift in the worse direction)."
    )


def relation_ci_note(result: CheckResult) -> str:
    levels = _levels(("relation", r.test) for r in result.relations)
    if not levels:
        return ""
    return (
        f"left − right [CI]: the contrast with its {_said(levels)} confidence interval; "
        "p (Holm): of the relation, Holm-adjusted over the experiment's relations; p against: "
        "of the opposite direction."
    )


def _levels(tests: Iterable[tuple[str, Test | None]]) -> dict[float, list[str]]:
    out: dict[float, list[str]] = {}
    for kind, test in tests:
        if test is not None:
            kinds = out.setdefault(round(test.ci_level, 6), [])
            if kind not in kinds:
                kinds.append(kind)
    return out


def _said(levels: dict[float, list[str]]) -> str:
    if len(levels) == 1:
        return level_text(next(iter(levels)))
    return "; ".join(
        f"{level_text(lv)} ({', '.join(kinds)} rows)" for lv, kinds in sorted(levels.items())
    )


def _difference(test: Test, unit: str, shift: float = 0.0) -> str:
    """``+0.12 [-1.10, +1.34] (90 % CI)`` of ``test``'s value minus ``shift``."""
    v, (lo, hi) = test.estimate.value - shift, test.ci
    return (
        f"{signed(v, unit)} [{signed(lo - shift, unit)}, {signed(hi - shift, unit)}] "
        f"({level_text(test.ci_level)} CI)"
    )


def failed_entry_line(i: int, r: EntryResult) -> str:
    """What a FAIL entry measured, what it was compared with, and the difference with its CI
    and the p that it lies beyond (a bound: the difference from the end it crossed)."""
    e, stat, t = r.entry, r.selection.stat, r.test
    head = (
        f"E{i} {e.label} ({e.metric}, {e.unit}): measured "
        f"{mean_std(stat.n, stat.mean, stat.std, e.unit)} over {stat.n} seed(s)"
    )
    if t is None:
        return f"{head}; must be {bound_text(r)}."
    if e.kind == "regression":
        base = e.measured
        return (
            f"{head}, baseline {number(float(base['mean']), e.unit)} over {int(base['n'])} "
            f"seeds, must be {bound_text(r)}; difference {_difference(t, e.unit)}, "
            f"p of a regression {p_text(t.p_other)}."
        )
    if e.kind == "bound":
        end = t.lo if t.lo is not None and t.ci[1] < t.lo else t.hi
        return (
            f"{head}, must be {bound_text(r)}; difference from {number(end, e.unit)}: "
            f"{_difference(t, e.unit, end or 0.0)}, p that it lies beyond {p_text(t.p_other)}."
        )
    return (
        f"{head}, expected {bound_text(r)}; difference {_difference(t, e.unit)}, "
        f"p that it lies outside ±{number(e.tolerance, e.unit)} {p_text(t.p_other)}."
    )


def contradicted_line(i: int, r: RelationResult) -> str:
    s, t = r.spec, r.test
    diff = _difference(t, s.unit) if t is not None else "-"
    return (
        f"R{i} {s.relation.text} ({s.metric}): left − right {diff}, {r.pairing or 'unpaired'}; "
        f"Holm-adjusted p of the opposite {p_text(r.p_other_adjusted)} "
        f"(of the relation {p_text(r.p_adjusted)})."
    )


def not_reproduced(result: CheckResult) -> list[str]:
    """One line per FAIL entry and per contradicted relation, in table order."""
    lines = [failed_entry_line(i, r) for i, r in enumerate(result.entries, 1) if r.verdict == FAIL]
    lines += [
        contradicted_line(i, r)
        for i, r in enumerate(result.relations, 1)
        if r.verdict == CONTRADICTED
    ]
    return lines


def undecided(result: CheckResult) -> list[str]:
    """One line per inconclusive entry or relation: its tested value and CI, and what would
    decide it (the seeds, or why no number of seeds does)."""
    tagged: list[tuple[str, str, Test | None, str]] = [
        (f"E{i} {r.entry.label}", r.entry.unit, r.test, r.reason)
        for i, r in enumerate(result.entries, 1)
        if r.verdict == INCONCLUSIVE
    ]
    tagged += [
        (f"R{i} {r.spec.relation.text}", r.spec.unit, r.test, r.reason)
        for i, r in enumerate(result.relations, 1)
        if r.verdict == INCONCLUSIVE
    ]
    return [
        (f"{name}: {_difference(t, unit)} — " if t is not None else f"{name}: ")
        + (reason or "not decided at this number of seeds")
        for name, unit, t, reason in tagged
    ]


def config_table(configs: Sequence[Config]) -> Table:
    def acc(c: Config, metric: str) -> str:
        s = c.stat(metric, 100.0)
        return mean_std(s.n, s.mean, s.std, "percent")

    def floor(c: Config, metric: str) -> str:
        """The floor over seeds; a floor of several fixed inits (eval.floor_inits) is the same for
        every seed, so the spread of its inits is shown beside it."""
        text = acc(c, metric)
        spread = c.stat(metric + "_std", 100.0)
        inits = {p.cell.eval.floor_inits for p in c.cells}
        if spread.n and len(inits) == 1:
            text += f" ({inits.pop()} inits, spread {spread.mean:.2f})"
        return text

    rows = []
    for c in configs:
        speed = c.stat("images_per_s")
        rows.append(
            [
                c.label,
                f"{sum(p.done for p in c.cells)}/{len(c.cells)}",
                acc(c, "knn/top1"),
                floor(c, "knn/top1_random_init"),
                acc(c, "knn/top1_gain"),
                acc(c, "linear/top1"),
                floor(c, "linear/top1_random_init"),
                acc(c, "linear/top1_gain"),
                mean_std(speed.n, speed.mean, speed.std, "value"),
            ]
        )
    return Table(
        [
            "configuration",
            "finished",
            "kNN top-1 %",
            "kNN floor %",
            "kNN gain (points)",
            "linear top-1 %",
            "linear floor %",
            "linear gain (points)",
            "images/s",
        ],
        rows,
    )
