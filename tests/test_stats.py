"""The statistics of a verdict (suite.check.stats) against scipy.stats on fixed inputs: TOST
bounds, one-sided, paired and Welch t, pooled sd, block residual sd, Holm, the prediction bound
and its power, Mann–Whitney."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sp

from suite.check import stats as st

A = [88.1, 87.4, 88.6, 87.9, 88.3]
B = [87.0, 86.9, 87.8, 86.5, 87.1]
C = [84.2, 85.0, 83.9]


def test_mean_estimate_is_the_mean_with_se_sd_over_root_n_and_n_minus_1_df():
    est = st.mean_estimate(A)
    assert est.value == pytest.approx(statistics.fmean(A))
    assert est.se == pytest.approx(statistics.stdev(A) / math.sqrt(5)) and est.df == 4
    one = st.mean_estimate([1.0])
    assert not one.usable
    stated = st.mean_estimate([1.0], sd=0.5)
    assert stated.usable and stated.se == 0.5 and math.isinf(stated.df)


def test_ci_equals_scipy_t_interval():
    est = st.mean_estimate(A)
    lo, hi = est.ci(0.90)
    ref = sp.t.interval(0.90, 4, loc=statistics.fmean(A), scale=sp.sem(A))
    assert (lo, hi) == pytest.approx(ref)


def test_tost_p_is_the_larger_one_sided_p_and_matches_scipy_one_sample_tests():
    diff = [x - 88.0 for x in A]
    est = st.mean_estimate(diff)
    res = st.interval_test(est, -1.0, 1.0, 0.05)
    p_lo = sp.ttest_1samp(diff, -1.0, alternative="greater").pvalue
    p_hi = sp.ttest_1samp(diff, 1.0, alternative="less").pvalue
    assert res.p_inside == pytest.approx(max(p_lo, p_hi))
    assert res.outcome == st.INSIDE and res.p_inside < 0.05
    # inside <=> both one-sided tests reject <=> the 90 % CI lies inside the margin
    lo, hi = est.ci(0.90)
    assert lo > -1.0 and hi < 1.0


@pytest.mark.parametrize(
    ("shift", "outcome"),
    [(0.0, st.INSIDE), (0.9, st.UNDECIDED), (3.0, st.OUTSIDE), (-3.0, st.OUTSIDE)],
)
def test_interval_test_reads_the_outcome_off_the_1_minus_2_alpha_ci(shift, outcome):
    est = st.mean_estimate([x - 88.0 + shift for x in A])
    res = st.interval_test(est, -1.0, 1.0, 0.05)
    assert res.outcome == outcome
    if outcome == st.OUTSIDE:
        assert res.p_outside < 0.05
        side = "less" if shift > 0 else "greater"
        bound = 1.0 if shift > 0 else -1.0
        diffs = [x - 88.0 + shift for x in A]
        ref = sp.ttest_1samp(diffs, bound, alternative="greater" if side == "less" else "less")
        assert res.p_outside == pytest.approx(ref.pvalue)


def test_one_sided_bound_and_its_opposite():
    est = st.mean_estimate(A)
    res = st.interval_test(est, 87.0, None, 0.05)
    assert res.outcome == st.INSIDE
    assert res.p_inside == pytest.approx(sp.ttest_1samp(A, 87.0, alternative="greater").pvalue)
    assert res.p_outside == pytest.approx(sp.ttest_1samp(A, 87.0, alternative="less").pvalue)


def test_paired_equals_scipy_ttest_rel():
    est = st.paired(A, B)
    for alt, p in (("greater", est.p_above(0)), ("less", est.p_below(0))):
        assert p == pytest.approx(sp.ttest_rel(A, B, alternative=alt).pvalue)
    assert est.p_two_sided() == pytest.approx(sp.ttest_rel(A, B).pvalue)
    ci = sp.ttest_rel(A, B).confidence_interval(0.95)
    assert est.ci(0.95) == pytest.approx((ci.low, ci.high))


def test_welch_equals_scipy_ttest_ind_unequal_variances():
    est = st.welch(A, C)
    ref = sp.ttest_ind(A, C, equal_var=False)
    assert est.df == pytest.approx(ref.df)
    assert est.p_two_sided() == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert est.ci(0.95) == pytest.approx((ci.low, ci.high))


def test_pooled_sd_equals_the_one_way_anova_within_mean_square():
    sd, df = st.pooled_sd([A, B, C])
    groups = [np.asarray(g) for g in (A, B, C)]
    within = sum(((g - g.mean()) ** 2).sum() for g in groups)
    assert df == 5 + 5 + 3 - 3 and sd == pytest.approx(math.sqrt(within / df))
    assert st.pooled_sd([[1.0], [2.0]]) is None


def test_block_residual_sd_is_the_two_way_additive_models_residual():
    arms = [dict(enumerate(A)), dict(enumerate(B)), {0: 84.0, 1: 84.4, 2: 85.1, 3: 83.8, 4: 84.9}]
    sd, df = st.block_residual_sd(arms)
    x = np.array([[a[s] for s in range(5)] for a in arms])
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    assert df == 2 * 4 and sd == pytest.approx(math.sqrt((resid**2).sum() / 8))
    # with two arms it is the paired differences' sd over root 2
    sd2, df2 = st.block_residual_sd(arms[:2])
    diffs = [a - b for a, b in zip(A, B, strict=True)]
    assert df2 == 4 and sd2 == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))


def test_holm_equals_the_step_down_rule():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    adj = st.holm(p)
    # sorted 0.005, 0.01, 0.03, 0.04, 0.5 times 5, 4, 3, 2, 1, made monotone
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    assert st.holm([]) == []


def test_prediction_bound_covers_one_new_draw_with_probability_1_minus_alpha():
    rng = np.random.default_rng(0)
    n, alpha, trials = 10, 0.05, 20000
    base = rng.normal(0.0, 1.0, size=(trials, n))
    new = rng.normal(0.0, 1.0, size=trials)
    crossed = 0
    for row, x in zip(base, new, strict=True):
        bound = st.prediction_bound(row.mean(), row.std(ddof=1), n, 1, alpha, "lower")
        crossed += x < bound
    assert crossed / trials == pytest.approx(alpha, abs=0.006)
    # the formula: mean - t(1 - a, n - 1) * sd * sqrt(1 + 1/n)
    assert st.prediction_bound(5.0, 2.0, 10, 1, 0.05, "lower") == pytest.approx(
        5.0 - sp.t.ppf(0.95, 9) * 2.0 * math.sqrt(1.1)
    )
    assert st.prediction_bound(5.0, 2.0, 10, 1, 0.05, "upper") > 5.0


def test_detectable_shift_is_crossed_with_the_stated_power():
    rng = np.random.default_rng(1)
    n, alpha, trials = 10, 0.005, 20000
    shift = st.detectable_shift(1.0, n, 1, alpha, power=0.9)
    hits = 0
    for _ in range(trials):
        row = rng.normal(0.0, 1.0, size=n)
        bound = st.prediction_bound(row.mean(), row.std(ddof=1), n, 1, alpha, "lower")
        hits += rng.normal(-shift, 1.0) < bound
    assert 0.885 < hits / trials < 0.915


def test_mann_whitney_equals_scipy_and_its_smallest_p():
    assert st.mann_whitney(A, B) == pytest.approx(
        sp.mannwhitneyu(A, B, alternative="two-sided").pvalue
    )
    assert st.mann_whitney_min_p(3, 3) == pytest.approx(0.1)  # 3 vs 3 can never reach 0.05
    assert st.mann_whitney([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)


def test_seeds_to_decide_finds_the_first_n_at_which_the_interval_test_decides():
    noise = st.Noise((st.Term(1.0, 0.6, 3, 2.0),))
    n = st.seeds_to_decide(noise, 0.3, -1.0, 1.0, 0.05)
    assert n is not None and n > 3
    assert st.interval_test(noise.estimate(0.3, n), -1.0, 1.0, 0.05).outcome == st.INSIDE
    before = st.interval_test(noise.estimate(0.3, n - 1), -1.0, 1.0, 0.05)
    assert before.outcome == st.UNDECIDED
    # a reference run's own sd 0.7 alone exceeds the gap at 90 %: nothing decides it
    fixed = st.Noise((st.Term(1.0, 0.6, 3, 2.0), st.Term(-1.0, 0.7, 1, math.inf, grows=False)))
    assert st.seeds_to_decide(fixed, 0.3, -1.0, 1.0, 0.05) is None


def test_a_reference_sharing_the_measured_sd_keeps_its_degrees_of_freedom():
    shared = st.Noise(
        (st.Term(1.0, 0.6, 3, 2.0), st.Term(-1.0, 0.6, 1, 2.0, grows=False, shares=0))
    )
    est = shared.estimate(0.0)
    assert est.se == pytest.approx(0.6 * math.sqrt(1 / 3 + 1)) and est.df == 2
    own = st.Noise((st.Term(1.0, 0.6, 3, 2.0), st.Term(-1.0, 0.6, 1, 2.0, grows=False)))
    assert own.estimate(0.0).df > 2  # two independent estimates: Welch-Satterthwaite
