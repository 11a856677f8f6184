"""The statistics of a verdict: estimates with a standard error, and the tests made on them.

Every judged number is an :class:`Estimate` — a value ``d`` (a mean, a mean minus a reference,
a paired contrast), its standard error ``se`` and the degrees of freedom ``df`` of that standard
error (``inf`` when the sd is taken as known). The tests are then t-tests on ``d / se``:

- :func:`interval_test` — is the true value inside ``[lo, hi]``? With both ends this is the
  two one-sided tests (TOST) of an equivalence claim; with one end a one-sided test of a bound.
  Decided at level ``alpha`` through the ``1 − 2·alpha`` confidence interval: inside → ``inside``,
  wholly outside → ``outside``, else ``undecided``.
- :func:`prediction_bound` — the threshold one new mean of ``m`` runs must not cross, given a
  baseline of ``n`` runs (``mean ∓ t(1 − alpha, n − 1) · sd · √(1/m + 1/n)``).
- :func:`holm` — Holm's step-down adjustment of a family of p-values.
- :func:`welch`, :func:`paired`, :func:`mann_whitney` — two-sample comparisons.
- :func:`pooled_sd` — ``√(Σ (n_i − 1) s_i² / Σ (n_i − 1))`` over arms of one design.

The distribution functions are scipy.stats' (a well-kept implementation, tested against here).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _st

INF = math.inf
INSIDE, OUTSIDE, UNDECIDED = "inside", "outside", "undecided"


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error and that error's degrees of freedom."""

    value: float
    se: float
    df: float

    @property
    def usable(self) -> bool:
        """False when there is no estimate of the error (one value and no stated sd)."""
        return math.isfinite(self.value) and math.isfinite(self.se) and self.df > 0

    def t(self, q: float) -> float:
        """The ``q`` quantile of the estimate's t distribution (normal when ``df`` is inf)."""
        return float(_st.norm.ppf(q) if math.isinf(self.df) else _st.t.ppf(q, self.df))

    def cdf(self, x: float) -> float:
        """P(T <= x) for the standardised statistic."""
        return float(_st.norm.cdf(x) if math.isinf(self.df) else _st.t.cdf(x, self.df))

    def ci(self, level: float) -> tuple[float, float]:
        """Two-sided ``level`` confidence interval of the value."""
        if self.se == 0:
            return self.value, self.value
        h = self.t(0.5 + level / 2) * self.se
        return self.value - h, self.value + h

    def p_above(self, x: float) -> float:
        """One-sided p of ``H0: value <= x`` against ``H1: value > x``."""
        if self.se == 0:
            return 0.0 if self.value > x else 1.0
        return 1.0 - self.cdf((self.value - x) / self.se)

    def p_below(self, x: float) -> float:
        """One-sided p of ``H0: value >= x`` against ``H1: value < x``."""
        if self.se == 0:
            return 0.0 if self.value < x else 1.0
        return self.cdf((self.value - x) / self.se)

    def p_two_sided(self, x: float = 0.0) -> float:
        return min(1.0, 2.0 * min(self.p_above(x), self.p_below(x)))


NO_ESTIMATE = Estimate(math.nan, math.nan, 0.0)


def mean_estimate(values: Sequence[float], sd: float | None = None, df: float | None = None):
    """The mean of ``values`` with ``se = sd/√n``: ``sd`` and ``df`` given (a pooled or stated
    sd), else the sample sd with ``n − 1`` degrees of freedom (no estimate for one value)."""
    n = len(values)
    if n == 0:
        return NO_ESTIMATE
    mean = statistics.fmean(values)
    if sd is None:
        if n < 2:
            return Estimate(mean, math.nan, 0.0)
        sd, df = statistics.stdev(values), n - 1
    return Estimate(mean, sd / math.sqrt(n), INF if df is None else df)


def combine(parts: Sequence[tuple[float, float, float]], groups: Sequence[int] | None = None):
    """``(se, df)`` of a sum of independent terms, each ``(coefficient, se, df)``: the root of
    the summed variances and the Welch–Satterthwaite degrees of freedom. Terms with the same
    ``groups`` label share one sd estimate (a reference whose sd is assumed to be the measured
    one): their variances add and they count as one term with that estimate's df."""
    labels = list(groups) if groups is not None else list(range(len(parts)))
    merged: dict[int, list[float]] = {}
    for (c, se, df), g in zip(parts, labels, strict=True):
        entry = merged.setdefault(g, [0.0, df])
        entry[0] += (c * se) ** 2
    var = sum(v for v, _ in merged.values())
    if any(df <= 0 for v, df in merged.values() if v > 0):
        return math.sqrt(var), 0.0
    denom = sum(v**2 / df for v, df in merged.values() if not math.isinf(df) and v > 0)
    return math.sqrt(var), (var**2 / denom if denom > 0 else INF)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """``(sd, df)`` pooled over arms: ``√(Σ (n_i − 1) s_i² / Σ (n_i − 1))``, ``df = Σ (n_i − 1)``;
    None when no arm has two values."""
    ss, df = 0.0, 0
    for g in groups:
        if len(g) > 1:
            ss += statistics.variance(g) * (len(g) - 1)
            df += len(g) - 1
    return (math.sqrt(ss / df), float(df)) if df else None


@dataclass(frozen=True)
class IntervalTest:
    """The outcome of :func:`interval_test`: the decision, the CI it was read from, and
    ``p_inside`` (the larger of the one-sided p-values that the value is inside each end: TOST)
    and ``p_outside`` (the smaller one-sided p that it lies beyond an end)."""

    outcome: str
    ci: tuple[float, float]
    p_inside: float
    p_outside: float


def interval_test(
    est: Estimate, lo: float | None, hi: float | None, alpha: float = 0.05
) -> IntervalTest:
    """Is the true value inside ``[lo, hi]`` (either end may be open)? Two one-sided tests at
    ``alpha`` each, read off the ``1 − 2·alpha`` CI: ``inside`` when the CI lies inside,
    ``outside`` when it lies wholly beyond an end, else ``undecided``."""
    ci = est.ci(1 - 2 * alpha)
    p_in = max(
        est.p_above(lo) if lo is not None else 0.0,
        est.p_below(hi) if hi is not None else 0.0,
    )
    p_out = min(
        est.p_below(lo) if lo is not None else 1.0,
        est.p_above(hi) if hi is not None else 1.0,
    )
    if (lo is None or ci[0] > lo) and (hi is None or ci[1] < hi):
        outcome = INSIDE
    elif (lo is not None and ci[1] < lo) or (hi is not None and ci[0] > hi):
        outcome = OUTSIDE
    else:
        outcome = UNDECIDED
    return IntervalTest(outcome, ci, p_in, p_out)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest p times
    ``m − i + 1``, made monotone, capped at 1. Reject where the adjusted p < alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def paired(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """The mean of the per-pair differences ``a_i − b_i`` with its paired standard error."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return mean_estimate([x - y for x, y in zip(a, b, strict=True)])


def welch(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """``mean(a) − mean(b)`` with Welch's standard error and Satterthwaite degrees of freedom."""
    ea, eb = mean_estimate(a), mean_estimate(b)
    if not (ea.usable and eb.usable):
        return Estimate(ea.value - eb.value, math.nan, 0.0)
    se, df = combine([(1.0, ea.se, ea.df), (-1.0, eb.se, eb.df)])
    return Estimate(ea.value - eb.value, se, df)


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact (small samples) Mann–Whitney U p-value of ``a`` against ``b``."""
    return float(_st.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def mann_whitney_min_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p the exact Mann–Whitney U test can give with these sizes:
    ``2 / C(n_a + n_b, n_a)`` (3 vs 3 seeds can never reach 0.05)."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def prediction_bound(mean: float, sd: float, n: int, m: int, alpha: float, side: str) -> float:
    """The threshold for the mean of ``m`` new runs given a baseline of ``n`` runs (mean, sd):
    ``mean − t(1 − alpha, n − 1) · sd · √(1/m + 1/n)`` for ``side="lower"`` (a regression is a
    smaller value), ``+`` for ``"upper"``. A fresh run of the same process crosses it with
    probability ``alpha``."""
    if n < 2:
        raise ValueError(f"a prediction interval needs a baseline of >= 2 runs, got {n}")
    h = float(_st.t.ppf(1 - alpha, n - 1)) * sd * math.sqrt(1 / m + 1 / n)
    return mean - h if side == "lower" else mean + h


def detectable_shift(sd: float, n: int, m: int, alpha: float, power: float = 0.9) -> float:
    """The smallest true shift of the new runs' mean that crosses a :func:`prediction_bound`
    with probability ``power``. With ``k = √(1/m + 1/n)``, ``(new mean − baseline mean)/(s·k)``
    is noncentral t (df ``n − 1``, noncentrality ``−shift/(σ·k)``); the shift solves
    ``P(T < −t(1 − alpha, n − 1)) = power`` (σ taken as ``sd``)."""
    from scipy.optimize import brentq

    k = math.sqrt(1 / m + 1 / n)
    crit = float(_st.t.ppf(1 - alpha, n - 1))

    def gap(delta: float) -> float:
        return float(_st.nct.cdf(-crit, n - 1, -delta / k)) - power

    return brentq(gap, 0.0, 100.0) * sd


def family_rate(alpha_each: float, count: int) -> float:
    """Family-wise false-alarm rate of ``count`` independent tests at ``alpha_each``
    (``1 − (1 − alpha)^count``; a bound for correlated ones is ``count · alpha``)."""
    return 1.0 - (1.0 - alpha_each) ** count


@dataclass(frozen=True)
class Term:
    """One independent source of error in an estimate: ``coef · (mean of n values with sd)``.

    ``df``: the degrees of freedom of ``sd`` (``inf``: taken as known). ``grows``: the term is
    the measurement, whose ``n`` more seeds would raise (a reference's one run stays one run);
    ``arms``: how many arms share a pooled ``sd`` (its df grows by ``arms`` per seed)."""

    coef: float
    sd: float
    n: float
    df: float
    grows: bool = True
    arms: int = 1
    shares: int | None = None  # index of the term whose sd estimate this one reuses

    def at(self, n: float | None = None) -> tuple[float, float, float]:
        """``(coef, se, df)`` with ``n`` values (the measurement's ``n`` when None)."""
        if n is None or not self.grows:
            return self.coef, self.sd / math.sqrt(self.n), self.df
        df = self.df if math.isinf(self.df) else self.arms * (n - 1)
        return self.coef, self.sd / math.sqrt(n), df


@dataclass(frozen=True)
class Noise:
    """The error model of a judged value: independent :class:`Term` s and a description."""

    terms: tuple[Term, ...]
    text: str = ""

    def estimate(self, value: float, n: float | None = None) -> Estimate:
        """``value`` with the combined standard error (at ``n`` seeds of the measurement)."""
        if not self.terms:
            return Estimate(value, math.nan, 0.0)
        groups = [i if t.shares is None else t.shares for i, t in enumerate(self.terms)]
        se, df = combine([t.at(n) for t in self.terms], groups)
        return Estimate(value, se, df)


def seeds_to_decide(
    noise: Noise, value: float, lo: float | None, hi: float | None, alpha: float, n_max: int = 1000
) -> int | None:
    """The fewest seeds of the measurement at which :func:`interval_test` would decide, were
    the value and the per-seed sd to stay as observed; None when no number up to ``n_max``
    does (the fixed terms — a reference's own noise — alone exceed the gap to the margin).
    The interval narrows as n grows, so the first deciding n is found by bisection."""
    growing = [t.n for t in noise.terms if t.grows]
    if not growing or not math.isfinite(value):
        return None

    def decides(n: int) -> bool:
        return interval_test(noise.estimate(value, n), lo, hi, alpha).outcome != UNDECIDED

    low = max(2, int(max(growing)) + 1)
    if not decides(n_max):
        return None
    high = n_max
    while low < high:
        mid = (low + high) // 2
        if decides(mid):
            high = mid
        else:
            low = mid + 1
    return low


def block_residual_sd(arms: Sequence[Mapping[object, float]]) -> tuple[float, float] | None:
    """``(sd, df)`` of the residuals of the additive model ``x[a, s] = arm_a + seed_s + e`` over
    arms that share their seeds (a randomised block design: each seed a block), on the seeds
    every arm has: ``Σ (x − x̄_a − x̄_s + x̄)² / ((A − 1)(S − 1))``. The error of a paired
    contrast with weights ``c`` is then ``sd · √(Σ c²/S)`` with these df — 3 seeds of 5 arms give
    8 df, where each pair's own differences give 2. None with fewer than 2 arms or 2 seeds."""
    if len(arms) < 2:
        return None
    seeds = set(arms[0])
    for a in arms[1:]:
        seeds &= set(a)
    if len(seeds) < 2:
        return None
    order = sorted(seeds, key=str)
    x = [[a[s] for s in order] for a in arms]
    n_a, n_s = len(x), len(order)
    grand = sum(map(sum, x)) / (n_a * n_s)
    arm_mean = [sum(row) / n_s for row in x]
    seed_mean = [sum(x[i][j] for i in range(n_a)) / n_a for j in range(n_s)]
    ss = sum(
        (x[i][j] - arm_mean[i] - seed_mean[j] + grand) ** 2 for i in range(n_a) for j in range(n_s)
    )
    df = (n_a - 1) * (n_s - 1)
    return math.sqrt(ss / df), float(df)
