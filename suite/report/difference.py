"""Each BN arm's difference from sync/sync, measured and as the paper prints it.

An *arm* is a configuration (:func:`suite.report.data.configurations`) whose values equal a
``sync/sync`` configuration's in every varying field except ``student_bn`` / ``teacher_bn``.
Its measured difference is ``mean(arm) − mean(sync/sync)`` in percent points with a 95 % CI:

- paired by seed when both have a value for the same seeds (two or more): the mean of the
  per-seed differences ``d_i``, CI ``d̄ ± t(0.975, n − 1) · s_d / √n`` (``stats.paired``);
- else Welch: ``x̄_a − x̄_s ± t(0.975, ν) · √(s_a²/n_a + s_s²/n_s)``, ν by Satterthwaite
  (``stats.welch``).

The paper's difference is ``paper(arm) − paper(sync/sync)`` where the baselines hold a number
(``compared_to`` of an equivalence or reference entry) for exactly each of the two
configurations' cells in that metric, both in one baseline file: a difference can be compared
across settings (STL10 vs a laptop-scale run) where the raw numbers cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from suite.check import metrics as m
from suite.check import stats as st
from suite.report.data import BN_FIELDS, Config

if TYPE_CHECKING:
    from suite.check.results import CheckResult

SYNC = ("sync", "sync")
Numbers = dict[tuple[frozenset[str], str], float]  # (cell ids, metric) -> number, percent
LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """``value`` (percent points) with its ``LEVEL`` CI (None without a spread), ``n`` units
    (pairs, or both arms' seeds) and how it was computed."""

    value: float
    ci: tuple[float, float] | None
    n: int
    pairing: str


@dataclass(frozen=True)
class Arm:
    """One arm against its sync/sync configuration, in one metric."""

    config: Config
    sync: Config
    metric: str
    measured: Difference
    paper: float | None  # paper(arm) − paper(sync/sync), percent points

    @property
    def pair(self) -> str:
        """``local/momentum``: the arm's student/teacher BN."""
        return "/".join(_pair(self.config))


def difference(arm: Mapping[int, float], sync: Mapping[int, float]) -> Difference | None:
    """``arm − sync`` from per-seed values (``seed -> value``): paired when the two have the
    same seeds (two or more), else Welch; None when either has no value."""
    if not arm or not sync:
        return None
    if set(arm) == set(sync) and len(arm) >= 2:
        seeds = sorted(arm)
        est = st.paired([arm[s] for s in seeds], [sync[s] for s in seeds])
        how = f"paired by seed ({len(seeds)} pairs)"
    else:
        est = st.welch(list(arm.values()), list(sync.values()))
        how = f"Welch ({len(arm)} vs {len(sync)} seeds)"
    ci = est.ci(LEVEL) if est.usable else None
    n = len(arm) if how.startswith("paired") else len(arm) + len(sync)
    return Difference(est.value, ci, n, how)


def _others(config: Config) -> tuple:
    """What must be equal for two configurations to be arms of one comparison: the varying
    values other than the BN pair, taken from the cells (a field the label leaves out too)."""
    from suite.runner.plan import HIDDEN_FIELDS

    flat = config.cells[0].cell.flat()
    skip = {"seed", *BN_FIELDS, *HIDDEN_FIELDS}
    return tuple((k, repr(v)) for k, v in sorted(flat.items()) if k not in skip)


def _pair(config: Config) -> tuple[str, str]:
    cell = config.cells[0].cell
    return cell.student_bn, cell.teacher_bn


def paper_numbers(result: CheckResult | None) -> dict[str, Numbers]:
    """``baseline file -> {(cell ids, metric) -> number in percent}`` of the entries that carry
    a source's number (equivalence or reference), by the cells each selects; the first entry
    of a file wins."""
    out: dict[str, Numbers] = {}
    for r in result.entries if result else ():
        e = r.entry
        if e.kind not in ("equivalence", "reference") or e.compared_to is None:
            continue
        if m.is_accuracy(e.metric):
            numbers = out.setdefault(e.where.rsplit(": ", 1)[0], {})
            numbers.setdefault(
                (frozenset(r.selection.cells), e.metric), e.compared_to * (100.0 / m.UNITS[e.unit])
            )
    return out


def paper_difference(
    numbers: Mapping[str, Numbers],
    arm: Config,
    sync: Config,
    metric: str,
) -> float | None:
    """``paper(arm) − paper(sync/sync)`` from the first baseline file holding both numbers (a
    difference is taken within one source, never across two)."""
    for file_numbers in numbers.values():
        a, s = file_numbers.get((arm.cell_ids, metric)), file_numbers.get((sync.cell_ids, metric))
        if a is not None and s is not None:
            return a - s
    return None


def arms(
    configs: Sequence[Config], metrics: Sequence[str], result: CheckResult | None = None
) -> list[Arm]:
    """Every arm with a measured difference from its sync/sync configuration, per metric, in
    the configurations' order (each metric's arms in turn)."""
    papers = paper_numbers(result)
    syncs = {_others(c): c for c in configs if _pair(c) == SYNC}
    out = []
    for metric in metrics:
        for c in configs:
            base = syncs.get(_others(c))
            if base is None or c is base:
                continue
            measured = difference(c.per_seed(metric, 100.0), base.per_seed(metric, 100.0))
            if measured is None:
                continue
            paper = paper_difference(papers, c, base, metric)
            out.append(Arm(c, base, metric, measured, paper))
    return out
