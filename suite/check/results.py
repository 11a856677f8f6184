"""What the judge decides: verdicts, the tests they were read from, and one result per entry,
relation and check (:mod:`suite.check.judge` makes them; :mod:`suite.check.render` and
:mod:`suite.report` show them)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from suite.check import stats as st
from suite.check.baseline import Entry, RelationSpec

PASS, REPRODUCED, HOLDS = "pass", "reproduced", "holds"
FAIL, CONTRADICTED = "FAIL", "contradicted"
INCONCLUSIVE, MISSING, REFERENCE = "inconclusive", "missing", "reference"
VERDICTS = (REPRODUCED, PASS, HOLDS, FAIL, CONTRADICTED, INCONCLUSIVE, MISSING, REFERENCE)
FAILED = (FAIL, CONTRADICTED)


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
    seeds: dict[str, int] = field(default_factory=dict)  # cell id -> seed
    flats: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell id -> flat config

    @property
    def stat(self) -> Stat:
        return Stat(tuple(self.values[c] for c in self.cells if c in self.values))

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(c for c in self.cells if c not in self.values)


@dataclass(frozen=True)
class Test:
    """What a verdict was read from: the estimate, the ends it was tested against (None: open),
    the CI at ``ci_level``, the p-values (``p``: of the claim; ``p_other``: of its opposite), the
    noise model in words, and the seeds that would decide an inconclusive verdict."""

    estimate: st.Estimate
    lo: float | None
    hi: float | None
    ci: tuple[float, float]
    ci_level: float
    p: float
    p_other: float
    noise: str
    seeds_to_decide: int | None = None
    undecidable: bool = False  # no number of seeds decides it (fixed noise exceeds the gap)
    outcome: str = st.UNDECIDED  # the interval test's: inside / outside / undecided

    def to_json(self) -> dict[str, Any]:
        e = self.estimate
        return {
            "value": finite(e.value),
            "se": finite(e.se),
            "df": None if math.isinf(e.df) else e.df,
            "lo": self.lo,
            "hi": self.hi,
            "ci": [finite(self.ci[0]), finite(self.ci[1])],
            "ci_level": self.ci_level,
            "p": finite(self.p),
            "p_other": finite(self.p_other),
            "noise": self.noise,
            "seeds_to_decide": self.seeds_to_decide,
            "undecidable": self.undecidable,
        }


@dataclass(frozen=True)
class EntryResult:
    entry: Entry
    selection: Selection
    verdict: str
    test: Test | None = None
    alpha: float | None = None  # the level the verdict was decided at
    threshold: float | None = None  # a regression entry's prediction bound (in unit)
    reason: str = ""  # why an entry is a reference or inconclusive, in words

    @property
    def delta(self) -> float | None:
        """Measured mean minus the compared number (None without both)."""
        stat, ref = self.selection.stat, self.entry.compared_to
        if ref is None or stat.n == 0:
            return None
        return stat.mean - ref

    def to_json(self) -> dict[str, Any]:
        e, stat = self.entry, self.selection.stat
        lo, hi = e.bounds()
        return {
            "where": e.where,
            "label": e.label,
            "kind": e.kind,
            "match": e.match_text,
            "metric": e.metric,
            "source_metric": e.source_metric or None,
            "unit": e.unit,
            "cells": list(self.selection.cells),
            "missing_cells": list(self.selection.missing),
            "n": stat.n,
            "values": list(stat.values),
            "mean": finite(stat.mean),
            "std": stat.std if stat.n else None,
            "expected": e.expected,
            "tolerance": e.tolerance,
            "side": e.side,
            "min": lo,
            "max": hi,
            "threshold": self.threshold,
            "delta": self.delta,
            "reference": e.reference,
            "test": self.test.to_json() if self.test else None,
            "alpha": self.alpha,
            "verdict": self.verdict,
            "reason": self.reason or None,
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
    test: Test | None = None
    pairing: str = ""  # "paired by seed (3 pairs)", "unpaired (Welch)", …
    p_adjusted: float | None = None  # Holm, over the experiment's relations
    p_other_adjusted: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "where": s.where,
            "label": s.label,
            "relation": s.relation.text,
            "metric": s.metric,
            "unit": s.unit,
            "margin": s.margin,
            "groups": {
                name: {
                    "match": s.group_text[name],
                    "cells": list(sel.cells),
                    "missing_cells": list(sel.missing),
                    "n": sel.stat.n,
                    "mean": finite(sel.stat.mean),
                    "std": sel.stat.std if sel.stat.n else None,
                }
                for name, sel in self.selections.items()
            },
            "lhs": self.lhs,
            "rhs": self.rhs,
            "difference": self.test.to_json() if self.test else None,
            "pairing": self.pairing or None,
            "p_holm": self.p_adjusted,
            "p_other_holm": self.p_other_adjusted,
            "alpha": s.alpha,
            "verdict": self.verdict,
            "reason": self.reason or None,
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
    strict: bool = False

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for r in (*self.entries, *self.relations):
            out[r.verdict] += 1
        return out

    @property
    def exit_code(self) -> int:
        counts = self.counts()
        if counts[FAIL] or counts[CONTRADICTED] or (counts[MISSING] and not self.allow_missing):
            return 1
        if self.strict and counts[INCONCLUSIVE]:
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
            "strict": self.strict,
            "exit_code": self.exit_code,
        }


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def interval(
    noise: st.Noise, value: float, lo: float | None, hi: float | None, alpha: float
) -> Test | None:
    """The interval test of ``value`` under ``noise`` (None without an error estimate)."""
    est = noise.estimate(value)
    if not est.usable:
        return None
    res = st.interval_test(est, lo, hi, alpha)
    seeds = undecidable = None
    if res.outcome == st.UNDECIDED and (lo is not None or hi is not None):
        seeds = st.seeds_to_decide(noise, value, lo, hi, alpha)
        undecidable = seeds is None
    tested = lo is not None or hi is not None  # a reference's interval tests nothing
    p_in, p_out = (res.p_inside, res.p_outside) if tested else (math.nan, math.nan)
    return Test(
        est,
        lo,
        hi,
        res.ci,
        1 - 2 * alpha,
        p_in,
        p_out,
        noise.text,
        seeds,
        bool(undecidable),
        res.outcome if tested else st.UNDECIDED,
    )


def why(verdict: str, test: Test) -> str:
    if verdict != INCONCLUSIVE:
        return ""
    if test.undecidable:
        return "no number of seeds decides it: the compared number's own noise exceeds the margin"
    if test.seeds_to_decide:
        return f"about {test.seeds_to_decide} seeds would decide it at this spread"
    return ""


def unjudgeable(selection: Selection, allow_missing: bool) -> bool:
    """The selection cannot be judged: no value, or missing cells that are not allowed."""
    return selection.stat.n == 0 or bool(selection.missing and not allow_missing)
