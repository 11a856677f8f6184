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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from suite.check import metrics as m
from suite.check import stats as st
from suite.check.baseline import Baseline, BaselineError, Entry, RelationSpec
from suite.check.pairing import block_design, judge_relations
from suite.check.results import (
    FAIL,
    INCONCLUSIVE,
    MISSING,
    PASS,
    REFERENCE,
    REPRODUCED,
    CheckResult,
    EntryResult,
    RelationResult,
    Selection,
    Stat,
    Test,
    interval,
    unjudgeable,
    why,
)
from suite.config.schema import Layer

if TYPE_CHECKING:
    from suite.runner.plan import Plan, PlannedCell


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
    if pooled is not None:
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
            test = interval(noise, stat.mean - ref, None, None, entry.alpha)
        return EntryResult(entry, selection, REFERENCE, test, reason=reason or "not judged")
    alpha = (regression_alpha or entry.alpha) if kind == "regression" else entry.alpha
    if unjudgeable(selection, allow_missing):
        return EntryResult(entry, selection, MISSING, alpha=alpha)
    if kind == "regression":
        return _judge_regression(entry, selection, alpha)
    lo, hi = entry.bounds()
    if kind == "equivalence":
        value = stat.mean - (entry.expected or 0.0)
        lo, hi = -(entry.tolerance or 0.0), entry.tolerance or 0.0
    else:
        value = stat.mean
    noise = entry_noise(entry, stat, pooled)
    test = interval(noise, value, lo, hi, entry.alpha)
    if test is None:
        return EntryResult(entry, selection, INCONCLUSIVE, None, entry.alpha, reason=noise.text)
    outcome = test.outcome
    verdict = {st.INSIDE: REPRODUCED if kind == "equivalence" else PASS, st.OUTSIDE: FAIL}.get(
        outcome, INCONCLUSIVE
    )
    return EntryResult(entry, selection, verdict, test, entry.alpha, reason=why(verdict, test))


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
                    pooled=pooled.get((entry.metric, entry.unit)) if baseline.pool_sd else None,
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
