"""``bnsuite compare``: two sets of runs of one experiment, configuration by configuration.

The comparison of asv's ``compare``, on seeds. A *side* is a tracking store, optionally only its
runs of one git commit (the run tag ``mlflow.source.git.commit``, matched by prefix); it reads
the latest FINISHED run of each cell. For each configuration (cells that differ only in their
seed, :func:`~suite.check.write.group_cells`) and metric, side A gives ``a_1 … a_n`` and side B
``b_1 … b_m`` (non-finite values are left out and counted), and:

- the difference ``d = mean(b) − mean(a)`` with its 95 % CI and the two-sided t-test p of
  ``H0: d = 0``: **paired** when both sides have values for the same seeds (the same cell ids,
  ``n = m ≥ 2``): ``d = mean(b_i − a_i)``, ``se = sd(b − a) / √n``, ``df = n − 1`` (scipy's
  ``ttest_rel``); else **Welch**: ``se = √(s_a²/n + s_b²/m)`` with Satterthwaite's df
  (``ttest_ind(equal_var=False)``);
- beside it, on unpaired rows, the exact two-sided Mann–Whitney U p, shown only where the sizes
  let it reach ``alpha`` at all (``2 / C(n + m, n) < alpha``; 3 against 3 seeds never can);
- the verdict, from the t-test p alone: ``p < alpha`` → ``better`` or ``worse`` by the metric's
  direction, else ``same``; fewer than 2 values on a side → ``n too small``, never worse;
- *worse beyond the factor* ``F ≥ 1``: worse, and ``mean_b < mean_a / F`` for a metric where
  higher is better, ``mean_b > mean_a · F`` where lower is (``F = 1``: any significant
  worsening). :attr:`Comparison.exit_code` is 1 when any row is, else 0. As in asv, the factor
  is a ratio: it assumes positive values.

The p-values are per row, not adjusted for the number of rows: with many rows a few ``better``
or ``worse`` at ``alpha`` are expected by chance alone.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from suite.check import metrics as m
from suite.check import stats as st
from suite.check.write import group_cells

if TYPE_CHECKING:
    from suite.config import Experiment
    from suite.runner.plan import Plan

COMMIT_TAG = "mlflow.source.git.commit"
DEFAULT_METRICS = (
    "linear/top1",
    "knn/top1",
    "linear/top1_gain",
    "knn/top1_gain",
    "train/loss_final",
    "images_per_s",
)
LEVEL = 0.95  # of the difference's confidence interval
BETTER, SAME, WORSE, TOO_FEW = "better", "same", "worse", "n too small"
VERDICTS = (BETTER, SAME, WORSE, TOO_FEW)
PAIRED, WELCH = "paired", "welch"


# -- the sides -------------------------------------------------------------------------------
def commit_matches(tags: dict[str, str], commit: str) -> bool:
    """The run's git commit starts with ``commit`` (case-insensitive)."""
    return tags.get(COMMIT_TAG, "").lower().startswith(commit.lower())


def plan_at_commit(plan: Plan, rows: Sequence[dict[str, Any]], commit: str) -> Plan:
    """``plan`` with each cell's run replaced by its latest FINISHED run of ``commit`` (a prefix;
    ``rows`` as :func:`suite.tracking.read_runs` gives them, oldest first); a cell without one
    is pending. A prefix that names runs of two commits is a ValueError."""
    commit = commit.strip()
    if not commit:
        raise ValueError("a commit prefix must not be empty")
    chosen: dict[str, dict[str, Any]] = {}
    full: set[str] = set()
    for row in rows:
        if row["cell_id"] and row["status"] == "FINISHED" and commit_matches(row["tags"], commit):
            chosen[row["cell_id"]] = row
            full.add(row["tags"][COMMIT_TAG])
    if len(full) > 1:
        raise ValueError(
            f"commit {commit!r} is ambiguous in {plan.tracking_uri}: runs of "
            f"{', '.join(sorted(full))}; give more of the hash"
        )
    cells = []
    for pc in plan.cells:
        row = chosen.get(pc.cell_id)
        cells.append(
            dataclasses.replace(
                pc,
                done=row is not None,
                last_status=None,
                metrics=dict(row["metrics"]) if row else {},
                run_id=row["run_id"] if row else None,
                tags=dict(row["tags"]) if row else {},
            )
        )
    return dataclasses.replace(plan, cells=tuple(cells))


def read_side(experiment: Experiment, uri: str, commit: str | None = None) -> Plan:
    """The plan of ``experiment`` in the store at ``uri`` (at ``commit`` when given); reads
    only: a store that does not exist is not created."""
    from suite.runner.plan import build_plan
    from suite.tracking import check_tracking, read_runs

    check_tracking(uri, write=False)
    plan = build_plan(experiment, uri)
    if commit is not None:
        plan = plan_at_commit(plan, read_runs(uri, experiment.name, status=None), commit)
    return plan


# -- the rows --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One side's values of a configuration's metric, by seed; ``dropped``: non-finite ones."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]
    dropped: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "sd": self.sd,
            "seeds": list(self.seeds),
            "values": list(self.values),
            "dropped_non_finite": self.dropped,
        }


@dataclass(frozen=True)
class Row:
    """One configuration and metric: the two samples, the difference B − A and the verdict."""

    configuration: str
    metric: str
    a: Sample
    b: Sample
    verdict: str
    pairing: str | None = None  # PAIRED or WELCH; None when n is too small
    diff: st.Estimate | None = None
    ci: tuple[float, float] | None = None
    p_t: float | None = None
    p_mwu: float | None = None  # unpaired rows whose sizes can reach alpha only
    beyond_factor: bool = False

    @property
    def relative(self) -> float | None:
        """``(mean_b − mean_a) / |mean_a|``; None without both means or when mean_a is 0."""
        if self.a.mean is None or self.b.mean is None or self.a.mean == 0:
            return None
        return (self.b.mean - self.a.mean) / abs(self.a.mean)

    def to_json(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration,
            "metric": self.metric,
            "higher_is_better": m.higher_is_better(self.metric),
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "pairing": self.pairing,
            "diff": _finite(None if self.diff is None else self.diff.value),
            "se": _finite(None if self.diff is None else self.diff.se),
            "df": _finite(None if self.diff is None else self.diff.df),  # None: inf (sd 0)
            "ci": None if self.ci is None else [_finite(x) for x in self.ci],
            "relative": self.relative,
            "p_t": _finite(self.p_t),
            "p_mwu": _finite(self.p_mwu),
            "verdict": self.verdict,
            "beyond_factor": self.beyond_factor,
        }


def _finite(x: float | None) -> float | None:
    """``x``, or None where JSON has no number for it (inf, nan)."""
    return x if x is not None and math.isfinite(x) else None


def _sample(pairs: Sequence[tuple[int, float | None]]) -> Sample:
    kept = sorted((s, v) for s, v in pairs if v is not None and math.isfinite(v))
    dropped = sum(1 for _, v in pairs if v is not None and not math.isfinite(v))
    return Sample(tuple(s for s, _ in kept), tuple(v for _, v in kept), dropped)


def compare_samples(
    configuration: str, metric: str, a: Sample, b: Sample, alpha: float, factor: float
) -> Row:
    """The row of two samples (module docstring: pairing, tests, verdict, factor)."""
    if a.n < 2 or b.n < 2:
        return Row(configuration, metric, a, b, TOO_FEW)
    if a.seeds == b.seeds:  # the same cells on both sides: pair them by seed
        pairing, diff, p_mwu = PAIRED, st.paired(b.values, a.values), None
    else:
        pairing, diff = WELCH, st.welch(b.values, a.values)
        enough = st.mann_whitney_min_p(a.n, b.n) < alpha
        p_mwu = st.mann_whitney(b.values, a.values) if enough else None
    p_t = diff.p_two_sided(0.0)
    up = m.higher_is_better(metric)
    verdict = SAME
    if p_t < alpha and diff.value != 0:
        verdict = BETTER if (diff.value > 0) == up else WORSE
    mean_a, mean_b = statistics.fmean(a.values), statistics.fmean(b.values)
    beyond = verdict == WORSE and (mean_b < mean_a / factor if up else mean_b > mean_a * factor)
    return Row(
        configuration, metric, a, b, verdict, pairing, diff, diff.ci(LEVEL), p_t, p_mwu, beyond
    )


# -- the comparison --------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """Every row of two sides of one experiment; ``a`` and ``b`` describe the sides."""

    experiment: str
    a: dict[str, Any]
    b: dict[str, Any]
    alpha: float
    factor: float
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.rows)

    @property
    def beyond_factor(self) -> int:
        return sum(r.beyond_factor for r in self.rows)

    @property
    def exit_code(self) -> int:
        """1 when a row is significantly worse beyond the factor, else 0."""
        return 1 if self.beyond_factor else 0

    def summary(self) -> str:
        """``3 better, 10 same, 1 worse (1 beyond factor 1)`` (and ``, 2 n too small``)."""
        text = (
            f"{self.count(BETTER)} better, {self.count(SAME)} same, {self.count(WORSE)} worse "
            f"({self.beyond_factor} beyond factor {self.factor:g})"
        )
        return text + (f", {self.count(TOO_FEW)} {TOO_FEW}" if self.count(TOO_FEW) else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "a": self.a,
            "b": self.b,
            "alpha": self.alpha,
            "factor": self.factor,
            "ci_level": LEVEL,
            "verdict_from": "t-test p (paired by seed, else Welch); Mann-Whitney U shown beside",
            "metrics": list(self.metrics),
            "rows": [r.to_json() for r in self.rows],
            "counts": {v: self.count(v) for v in VERDICTS},
            "beyond_factor": self.beyond_factor,
            "summary": self.summary(),
            "exit_code": self.exit_code,
        }


def _side(plan: Plan, commit: str | None) -> dict[str, Any]:
    done = [pc for pc in plan.cells if pc.done]
    commits = sorted({pc.tags[COMMIT_TAG] for pc in done if COMMIT_TAG in pc.tags})
    return {
        "tracking_uri": plan.tracking_uri,
        "commit": commit,
        "cells_done": len(done),
        "cells": len(plan.cells),
        "run_commits": commits,
    }


def compare_plans(
    plan_a: Plan,
    plan_b: Plan,
    metrics: Sequence[str] | None = None,
    alpha: float = 0.05,
    factor: float = 1.0,
    commits: tuple[str | None, str | None] = (None, None),
) -> Comparison:
    """Compare side B with side A, cell by cell id (``metrics`` None: those of
    :data:`DEFAULT_METRICS` that any run carries). A side without a finished run, or a metric
    no run carries, is a ValueError; ``commits`` only describe the sides."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha:g} is not a level in (0, 1)")
    if not factor >= 1:
        raise ValueError(f"factor {factor:g} must be >= 1 (1: any significant worsening)")
    for name, plan, commit in (("A", plan_a, commits[0]), ("B", plan_b, commits[1])):
        if not any(pc.done for pc in plan.cells):
            at = f" of commit {commit}" if commit else ""
            raise ValueError(
                f"side {name}: no FINISHED run{at} of experiment {plan.name!r} in "
                f"{plan.tracking_uri}; nothing to compare"
            )
    done = [pc for plan in (plan_a, plan_b) for pc in plan.cells if pc.done]
    carried = [
        x for x in (metrics or DEFAULT_METRICS) if any(_value(pc, x) is not None for pc in done)
    ]
    absent = [x for x in metrics or () if x not in carried]
    if absent or not carried:
        raise ValueError(
            f"no finished run on either side carries {', '.join(absent or DEFAULT_METRICS)}"
            + ("" if metrics else "; name the metrics to compare with --metric")
        )
    by_id = {pc.cell_id: pc for pc in plan_b.cells}
    rows = []
    for label, _, indices in group_cells(plan_a):
        cells_a = [plan_a.cells[i] for i in indices]
        cells_b = [by_id.get(pc.cell_id) for pc in cells_a]
        for metric in carried:
            a = _sample([(pc.cell.seed, _value(pc, metric)) for pc in cells_a])
            b = _sample([(pc.cell.seed, _value(pc, metric)) for pc in cells_b if pc])
            if a.n or b.n or a.dropped or b.dropped:
                rows.append(compare_samples(label, metric, a, b, alpha, factor))
    return Comparison(
        plan_a.name,
        _side(plan_a, commits[0]),
        _side(plan_b, commits[1]),
        alpha,
        factor,
        tuple(carried),
        tuple(rows),
    )


def _value(planned: Any, metric: str) -> float | None:
    return m.cell_value(planned.metrics, metric) if planned.done else None


# -- the text --------------------------------------------------------------------------------
def _side_text(side: dict[str, Any]) -> str:
    at = f" @ {side['commit']}" if side["commit"] else ""
    commits = side["run_commits"]
    ran = (
        f"; runs of {', '.join(c[:10] for c in commits)}"
        if 0 < len(commits) <= 3
        else f"; runs of {len(commits)} commits"
        if commits
        else ""
    )
    return f"{side['tracking_uri']}{at} ({side['cells_done']}/{side['cells']} cells done{ran})"


def render_comparison(c: Comparison) -> str:
    """The text of ``bnsuite compare``: the sides, the rule, one row per configuration and
    metric, then the counts."""
    from suite.check.render import number, p_text, signed
    from suite.runner.progress import format_table

    headers = [
        "configuration",
        "metric",
        "n A",
        "n B",
        "mean A ± sd",
        "mean B ± sd",
        f"diff B-A [{LEVEL:.0%} CI]",
        "change",
        "pairing",
        "p (t)",
        "p (MWU)",
        "verdict",
    ]
    table = []
    for r in c.rows:
        unit = m.default_unit(r.metric)

        def spread(s: Sample, unit: str = unit) -> str:
            if s.mean is None:
                return "-"
            return number(s.mean, unit) + ("" if s.sd is None else f" ± {number(s.sd, unit)}")

        def count(s: Sample) -> str:
            return f"{s.n}" + (f" (+{s.dropped} nan)" if s.dropped else "")

        diff = "-"
        if r.diff is not None and r.ci is not None:
            diff = (
                f"{signed(r.diff.value, unit)} [{signed(r.ci[0], unit)}, {signed(r.ci[1], unit)}]"
            )
        rel = "-" if r.relative is None else f"{100 * r.relative:+.2f} %"
        mark = " *" if r.beyond_factor else ""
        table.append(
            [
                r.configuration,
                r.metric + (" ↑" if m.higher_is_better(r.metric) else " ↓"),
                count(r.a),
                count(r.b),
                spread(r.a),
                spread(r.b),
                diff,
                rel,
                r.pairing or "-",
                p_text(r.p_t),
                p_text(r.p_mwu),
                r.verdict + mark,
            ]
        )
    lines = [
        f"compare {c.experiment!r}",
        f"  A: {_side_text(c.a)}",
        f"  B: {_side_text(c.b)}",
        f"verdict: two-sided t-test of mean B - mean A at alpha {c.alpha:g} (paired by seed "
        "where both sides ran the same seeds, else Welch); Mann-Whitney U beside it on unpaired "
        "rows whose sizes can reach alpha; ↑/↓ higher/lower is better",
        "",
        format_table(headers, table) if table else "(no configuration has a value)",
        "",
        c.summary(),
    ]
    if c.beyond_factor:
        lines.append(f"* worse beyond factor {c.factor:g}: exit 1")
    return "\n".join(lines)
