"""Judge an experiment's recorded runs against its baselines: one verdict per entry and relation.

For each entry the cells it selects are found in the plan (an entry that selects no planned cell
is a :class:`~suite.check.baseline.BaselineError`: a typo must not pass as "missing"); each cell
contributes the metric of its latest FINISHED run. Every verdict is a statistical test on an
:class:`~suite.check.stats.Estimate` (a value, its standard error and degrees of freedom) whose
noise model the entry states (:class:`~suite.check.baseline.NoiseSpec`):

- ``equivalence`` (``expected ± tolerance``, the tolerance read as the difference that would
  matter): the ``1 − 2α`` CI of *measured − expected* — the measurement's standard error and the
  compared number's own run noise (``ref_sd``) — inside ``±tolerance`` is ``reproduced`` (TOST),
  wholly outside is ``FAIL``, else ``inconclusive`` with the seeds that would decide it;
- ``bound`` (``min`` / ``max``, or a one-sided ``expected ± tolerance``): the same test of the
  mean against fixed ends: ``pass`` / ``FAIL`` / ``inconclusive``;
- ``regression`` (written by ``--write-baseline`` from n measured seeds): the mean of the new runs
  against the baseline's prediction bound ``mean ∓ t(1 − α_e, n − 1)·sd·√(1/m + 1/n)``, with
  ``α_e`` = the section's ``false_alarm`` split over its regression entries (Bonferroni): ``pass``
  or ``FAIL``, never inconclusive;
- ``reference``: a number shown beside the measurement (with the difference and its CI), never
  judged — also any entry whose source reports another metric (``source_metric``).

A relation tests its contrast ``left − right`` on per-seed values where the groups share seeds
(paired), else with Welch's standard error: one-sided for ``<`` / ``>``, two one-sided tests
against ``±margin`` for ``~=``; its p-values are Holm-adjusted over the experiment's relations.
Verdicts ``holds`` / ``contradicted`` (significant the other way) / ``inconclusive``.

Either kind is ``missing`` when a selected cell has no finished run carrying the metric (with
``allow_missing``: judged on the cells that have one; missing only when none has).

Exit code of a check: 1 when anything FAILed or was contradicted, or is missing (unless
allowed), or — with ``strict`` — is inconclusive; else 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from suite.check import metrics as m
from suite.check import stats as st
from suite.check.baseline import Baseline, BaselineError, Entry, RelationSpec
from suite.config.schema import Layer

if TYPE_CHECKING:
    from suite.runner.plan import Plan, PlannedCell

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

    def to_json(self) -> dict[str, Any]:
        e = self.estimate
        return {
            "value": _finite(e.value),
            "se": _finite(e.se),
            "df": None if math.isinf(e.df) else e.df,
            "lo": self.lo,
            "hi": self.hi,
            "ci": [_finite(self.ci[0]), _finite(self.ci[1])],
            "ci_level": self.ci_level,
            "p": _finite(self.p),
            "p_other": _finite(self.p_other),
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
            "mean": _finite(stat.mean),
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
                    "mean": _finite(sel.stat.mean),
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


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


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
    seeds: dict[str, int] = {}
    flats: dict[str, dict[str, Any]] = {}
    for planned, tree in zip(plan.cells, trees, strict=True):
        if not matches(tree, layer):
            continue
        cid = planned.cell_id
        cells.append(cid)
        seeds[cid] = planned.cell.seed
        flats[cid] = planned.cell.flat()
        value = cell_metric(planned, metric)
        if value is not None and math.isfinite(value):
            values[cid] = value * scale
    return Selection(tuple(cells), values, seeds, flats)


def cell_metric(planned: PlannedCell, metric: str) -> float | None:
    """``metric`` of a planned cell's finished run (None if not done or not logged)."""
    return m.cell_value(planned.metrics, metric) if planned.done else None


def _unjudgeable(selection: Selection, allow_missing: bool) -> bool:
    """The selection cannot be judged: no value, or missing cells that are not allowed."""
    return selection.stat.n == 0 or bool(selection.missing and not allow_missing)


# -- entries ---------------------------------------------------------------------------------
def measurement_sd(
    entry: Entry, stat: Stat, pooled: tuple[float, float, int] | None
) -> tuple[float, float, int, str] | None:
    """``(sd, df, arms, words)`` of the measurement's per-seed noise: the stated ``sd``, else the
    section's pooled sd (``pool_sd``), else the seeds' own; None for one value and nothing
    stated."""
    noise = entry.noise
    if noise.sd is not None:
        df = math.inf if noise.sd_df is None else noise.sd_df
        return noise.sd, df, 1, f"sd {noise.sd:.4g} stated ({noise.sd_source or 'no source'})"
    if noise.pool and pooled is not None:
        sd, df, arms = pooled
        return sd, df, arms, f"sd {sd:.4g} pooled over {arms} arms (df {df:g})"
    if stat.n > 1:
        return stat.std, stat.n - 1.0, 1, f"sd {stat.std:.4g} of {stat.n} seeds"
    return None


def entry_noise(entry: Entry, stat: Stat, pooled: tuple[float, float, int] | None) -> st.Noise:
    """The error model of *measured mean − compared number*: the measurement's standard error,
    plus — for a number that is itself a run (``expected ± tolerance``, a reference) — that
    run's noise: ``ref_sd`` stated, or the measured sd (``"measured"``, the default there)."""
    own = measurement_sd(entry, stat, pooled)
    if own is None:
        return st.Noise((), f"one value ({stat.n} seed) and no sd stated: no error estimate")
    sd, df, arms, words = own
    terms = [st.Term(1.0, sd, stat.n, df, arms=arms)]
    ref = entry.noise.ref_sd
    number_is_a_run = entry.kind in ("equivalence", "reference")
    if ref is None and number_is_a_run:
        ref = "measured"
    n_ref = entry.noise.ref_n
    if ref == "measured":
        terms.append(st.Term(-1.0, sd, n_ref, df, grows=False, shares=0))
        words += f"; the compared number: {n_ref:g} run(s) with the same sd"
    elif ref:
        terms.append(st.Term(-1.0, float(ref), n_ref, math.inf, grows=False))
        src = entry.noise.ref_sd_source or "no source"
        words += f"; the compared number: {n_ref:g} run(s) with sd {float(ref):.4g} ({src})"
    return st.Noise(tuple(terms), words)


def judge_entry(
    entry: Entry,
    selection: Selection,
    allow_missing: bool,
    *,
    pooled: tuple[float, float, int] | None = None,
    regression_alpha: float | None = None,
) -> EntryResult:
    """One entry's verdict (see the module docstring)."""
    stat = selection.stat
    kind, reason = entry.kind, ""
    if entry.protocol_differs and kind != "reference":
        kind = "reference"
        reason = (
            f"not judged: the source reports {entry.source_metric}, the run measures "
            f"{entry.metric} (another protocol)"
        )
    if kind == "reference":
        test = None
        ref = entry.compared_to
        if ref is not None and stat.n:
            noise = entry_noise(replace(entry, kind="reference"), stat, pooled)
            test = _interval(noise, stat.mean - ref, None, None, entry.alpha)
        return EntryResult(entry, selection, REFERENCE, test, reason=reason or "not judged")
    if _unjudgeable(selection, allow_missing):
        return EntryResult(entry, selection, MISSING)
    if kind == "regression":
        return _judge_regression(entry, selection, regression_alpha or entry.alpha)
    lo, hi = entry.bounds()
    if kind == "equivalence":
        value = stat.mean - (entry.expected or 0.0)
        lo, hi = -(entry.tolerance or 0.0), entry.tolerance or 0.0
    else:
        value = stat.mean
    noise = entry_noise(entry, stat, pooled)
    test = _interval(noise, value, lo, hi, entry.alpha)
    if test is None:
        return EntryResult(entry, selection, INCONCLUSIVE, None, entry.alpha, reason=noise.text)
    outcome = _outcome(test)
    verdict = {st.INSIDE: REPRODUCED if kind == "equivalence" else PASS, st.OUTSIDE: FAIL}.get(
        outcome, INCONCLUSIVE
    )
    return EntryResult(entry, selection, verdict, test, entry.alpha, reason=_why(verdict, test))


def _interval(
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
        est, lo, hi, res.ci, 1 - 2 * alpha, p_in, p_out, noise.text, seeds, bool(undecidable)
    )


def _outcome(test: Test) -> str:
    inside = (test.lo is None or test.ci[0] > test.lo) and (test.hi is None or test.ci[1] < test.hi)
    if inside:
        return st.INSIDE
    beyond = (test.lo is not None and test.ci[1] < test.lo) or (
        test.hi is not None and test.ci[0] > test.hi
    )
    return st.OUTSIDE if beyond else st.UNDECIDED


def _why(verdict: str, test: Test) -> str:
    if verdict != INCONCLUSIVE:
        return ""
    if test.undecidable:
        return "no number of seeds decides it: the compared number's own noise exceeds the margin"
    if test.seeds_to_decide:
        return f"about {test.seeds_to_decide} seeds would decide it at this spread"
    return ""


def _judge_regression(entry: Entry, selection: Selection, alpha: float) -> EntryResult:
    """The new runs' mean against the baseline's prediction bound (see the module docstring);
    ``measured`` holds the baseline's n, mean and std in the entry's unit."""
    stat, base = selection.stat, entry.measured  # measured: in the entry's unit
    n, mean, sd = int(base["n"]), float(base["mean"]), float(base["std"])
    threshold = st.prediction_bound(mean, sd, n, stat.n, alpha, entry.side)
    est = st.Estimate(stat.mean - mean, sd * math.sqrt(1 / stat.n + 1 / n), n - 1.0)
    # the claim "no regression" is the null hypothesis: only the p against it (of a regression)
    # is a test; FAIL where it is below alpha (equivalently: the mean crosses the threshold)
    worse = est.p_below(0.0) if entry.side == "lower" else est.p_above(0.0)
    test = Test(
        est,
        None,
        None,
        est.ci(1 - 2 * alpha),
        1 - 2 * alpha,
        math.nan,
        worse,
        f"baseline sd {sd:.4g} of {n} seeds (df {n - 1}); {stat.n} new run(s)",
    )
    crossed = stat.mean < threshold if entry.side == "lower" else stat.mean > threshold
    return EntryResult(entry, selection, FAIL if crossed else PASS, test, alpha, threshold)


def pooled_sds(
    entries: Sequence[Entry], selections: Sequence[Selection]
) -> dict[tuple[str, str], tuple[float, float, int]]:
    """Per (metric, unit): the sd pooled over the distinct arms (cell sets) of a section's
    entries, its df and the number of arms with two or more values."""
    arms: dict[tuple[str, str], dict[frozenset[str], tuple[float, ...]]] = {}
    for e, sel in zip(entries, selections, strict=True):
        arms.setdefault((e.metric, e.unit), {})[frozenset(sel.cells)] = sel.stat.values
    out = {}
    for key, groups in arms.items():
        pooled = st.pooled_sd(list(groups.values()))
        if pooled is not None:
            out[key] = (*pooled, sum(len(g) > 1 for g in groups.values()))
    return out


# -- relations -------------------------------------------------------------------------------
def pairs(spec: RelationSpec, selections: Mapping[str, Selection]) -> tuple[list, str] | None:
    """The per-unit values of every group, paired: by seed when each group has one value per
    seed and the groups share their seeds; else by the cells' other varying values (the fields
    no group constrains). ``([{group: value}, …], words)``, or None when the groups do not pair.
    """
    constrained = {".".join(t) for layer in spec.groups.values() for t in layer}
    constrained |= {"student_bn", "teacher_bn", "method.name"}

    def keyed(sel: Selection, key) -> dict[Any, float] | None:
        out: dict[Any, float] = {}
        for cid, v in sel.values.items():
            k = key(sel, cid)
            if k in out:
                return None
            out[k] = v
        return out

    def by_seed(sel: Selection, cid: str):
        return sel.seeds[cid]

    def by_cell(sel: Selection, cid: str):
        flat = sel.flats[cid]
        return tuple(sorted((f, repr(v)) for f, v in flat.items() if f not in constrained))

    for key, words in ((by_seed, "seed"), (by_cell, "cell")):
        per_group = {name: keyed(sel, key) for name, sel in selections.items()}
        if any(v is None for v in per_group.values()):
            continue
        common = set.intersection(*(set(v) for v in per_group.values()))
        if len(common) < 2 or any(len(v) != len(common) for v in per_group.values()):
            continue
        units = [{name: per_group[name][k] for name in per_group} for k in sorted(common, key=str)]
        return units, f"paired by {words} ({len(units)} pairs)"
    return None


def relation_test(
    spec: RelationSpec,
    selections: Mapping[str, Selection],
    design: tuple[float, float, int] | None = None,
) -> tuple[Test | None, str]:
    """The test of the relation's contrast ``left − right``, and how it was paired. ``design``:
    ``(sd, df, arms)`` of the section's block residuals (``pool_sd``), used for a contrast
    paired by seed in place of its own few differences' sd."""
    rel = spec.relation
    means = {name: sel.stat.mean for name, sel in selections.items()}
    paired = pairs(spec, selections)
    if paired is not None:
        units, words = paired
        values = [rel.contrast(u) for u in units]
        value, k = statistics.fmean(values), len(values)
        if design is not None and words.startswith("paired by seed"):
            sd, df, arms = design
            weight = math.sqrt(sum(c * c for c in rel.gradient(means).values()))
            terms = (st.Term(weight, sd, k, df, arms=arms - 1),)
            text = f"block residual sd {sd:.4g} of {arms} arms x {k} seeds (df {df:g})"
        else:
            sd = statistics.stdev(values)
            terms = (st.Term(1.0, sd, k, k - 1.0),)
            text = f"sd {sd:.4g} of {k} per-pair differences"
        noise = st.Noise(terms, text)
    else:
        words = "unpaired (Welch)"
        grads = rel.gradient(means)
        parts = []
        for name, sel in selections.items():
            c, stat = grads[name], sel.stat
            if c == 0:
                continue
            stated = spec.noise.sd
            if stated is not None:  # a per-seed sd known from elsewhere (one-seed groups)
                df = math.inf if spec.noise.sd_df is None else spec.noise.sd_df
                parts.append(st.Term(c, stated, stat.n, df))
                continue
            if stat.n < 2:
                return None, f"{words}: group {name!r} has {stat.n} value, no spread"
            parts.append(st.Term(c, stat.std, stat.n, stat.n - 1.0))
        noise = st.Noise(
            tuple(parts),
            "Welch over the groups' seeds"
            if spec.noise.sd is None
            else f"sd {spec.noise.sd:.4g} stated ({spec.noise.sd_source or 'no source'})",
        )
        if spec.noise.sd is not None:
            words = "unpaired (stated sd)"
        value = rel.contrast(means)
    if rel.direction == "~":
        lo, hi = -(spec.margin or 0.0), spec.margin or 0.0
    elif rel.direction == "<":
        lo, hi = None, 0.0
    else:
        lo, hi = 0.0, None
    test = _interval(noise, value, lo, hi, spec.alpha)
    return test, words


def block_design(
    selections: Sequence[Selection],
) -> tuple[float, float, int] | None:
    """``(sd, df, arms)``: the block residual sd (:func:`~suite.check.stats.block_residual_sd`)
    of the distinct arms among ``selections`` that hold one value per seed."""
    arms: dict[frozenset[str], dict[int, float]] = {}
    for sel in selections:
        by_seed: dict[int, float] = {}
        for cid, v in sel.values.items():
            if sel.seeds[cid] in by_seed:
                break
            by_seed[sel.seeds[cid]] = v
        else:
            if by_seed:
                arms[frozenset(sel.cells)] = by_seed
    found = st.block_residual_sd(list(arms.values()))
    return None if found is None else (*found, len(arms))


def judge_relations(
    specs: Sequence[RelationSpec],
    selections: Sequence[dict[str, Selection]],
    allow_missing: bool,
    designs: Sequence[tuple[float, float, int] | None] | None = None,
) -> list[RelationResult]:
    """Every relation's verdict, Holm-adjusted over the relations that could be tested."""
    prelim: list[RelationResult] = []
    designs = designs or [None] * len(specs)
    for spec, sels, design in zip(specs, selections, designs, strict=True):
        if any(_unjudgeable(sel, allow_missing) for sel in sels.values()):
            prelim.append(RelationResult(spec, sels, MISSING))
            continue
        lhs, rhs = spec.relation.sides({n: s.stat.mean for n, s in sels.items()})
        test, pairing = relation_test(spec, sels, design)
        reason = ""
        if test is None:  # no test could be made: the pairing text says why
            pairing, reason = "", pairing
        prelim.append(
            RelationResult(spec, sels, INCONCLUSIVE, lhs, rhs, test, pairing, reason=reason)
        )
    tested = [i for i, r in enumerate(prelim) if r.test is not None]
    adj = st.holm([prelim[i].test.p for i in tested])
    adj_other = st.holm([prelim[i].test.p_other for i in tested])
    out = list(prelim)
    for i, pa, po in zip(tested, adj, adj_other, strict=True):
        r = prelim[i]
        if pa < r.spec.alpha:
            verdict = HOLDS
        elif po < r.spec.alpha:
            verdict = CONTRADICTED
        else:
            verdict = INCONCLUSIVE
        reason = ""
        if verdict == INCONCLUSIVE:
            reason = _why(verdict, r.test)
            if r.test.p < r.spec.alpha:
                reason = (
                    f"p {r.test.p:.2g} alone, {pa:.2g} after Holm's adjustment over "
                    f"{len(tested)} relations"
                )
        out[i] = replace(r, verdict=verdict, p_adjusted=pa, p_other_adjusted=po, reason=reason)
    return out


# -- the check -------------------------------------------------------------------------------
Selector = Callable[[Layer, str, str], Selection]


def judge_baselines(
    baselines: Sequence[Baseline], selector: Selector, *, allow_missing: bool, where: str = ""
) -> tuple[list[EntryResult], list[RelationResult]]:
    """Every entry and relation of ``baselines``, with the cells ``selector(match, metric,
    unit)`` selects. Raises :class:`BaselineError` for an entry or a relation group that selects
    nothing (``where`` says what was searched)."""
    errors: list[str] = []
    entries: list[EntryResult] = []
    specs: list[RelationSpec] = []
    groups: list[dict[str, Selection]] = []
    designs: list[tuple[float, float, int] | None] = []
    for baseline in baselines:
        chosen: list[tuple[Entry, Selection]] = []
        for entry in baseline.entries:
            sel = selector(entry.match, entry.metric, entry.unit)
            if not sel.cells:
                errors.append(f"{entry.where}.match: {entry.match_text} {where}")
                continue
            chosen.append((entry, sel))
        pooled = pooled_sds([e for e, _ in chosen], [s for _, s in chosen])
        n_regression = sum(e.kind == "regression" for e, _ in chosen)
        alpha_each = baseline.false_alarm / n_regression if n_regression else None
        for entry, sel in chosen:
            entries.append(
                judge_entry(
                    entry,
                    sel,
                    allow_missing,
                    pooled=pooled.get((entry.metric, entry.unit)),
                    regression_alpha=alpha_each,
                )
            )
        section: list[tuple[RelationSpec, dict[str, Selection]]] = []
        for spec in baseline.relations:
            sels = {
                name: selector(layer, spec.metric, spec.unit) for name, layer in spec.groups.items()
            }
            empty = [name for name, sel in sels.items() if not sel.cells]
            for name in empty:
                errors.append(f"{spec.where}: group {name!r} ({spec.group_text[name]}) {where}")
            if not empty:
                section.append((spec, sels))
        for spec, sels in section:
            design = None
            if baseline.pool_sd:
                same = [
                    sel
                    for other, osels in section
                    if (other.metric, other.unit) == (spec.metric, spec.unit)
                    for sel in osels.values()
                ]
                design = block_design(same)
            specs.append(spec)
            groups.append(sels)
            designs.append(design)
    if errors:
        raise BaselineError(errors)
    return entries, judge_relations(specs, groups, allow_missing, designs)


def check_plan(
    plan: Plan,
    baselines: Sequence[Baseline],
    *,
    allow_missing: bool = False,
    strict: bool = False,
) -> CheckResult:
    """Every entry and relation of ``baselines`` judged on ``plan``'s finished runs.

    Raises :class:`BaselineError` (all problems at once) for an entry or a relation group that
    selects no cell of the plan.
    """
    trees = [pc.cell.to_dict() for pc in plan.cells]

    def selector(layer: Layer, metric: str, unit: str) -> Selection:
        return select(plan, layer, metric, unit, trees)

    entries, relations = judge_baselines(
        baselines, selector, allow_missing=allow_missing, where=_no_cell(plan)
    )
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
        strict=strict,
    )


def _no_cell(plan: Plan) -> str:
    return (
        f"selects no cell of experiment {plan.name!r} ({len(plan.cells)} cells; "
        f"`bnsuite plan {plan.experiment.path}` lists their values)"
    )
