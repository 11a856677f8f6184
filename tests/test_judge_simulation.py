"""Operating characteristics of the judge, by simulation: fabricated per-seed results (fixed
RNG) judged by the real baselines, so the error rates the docs state are the judge's own.

- Table 1 (baselines/paper.yaml, stl10-table1: the paper's claims as relations): 3 seeds per
  arm, seed sd 0.6 points. A correct reproduction (true means = the paper's numbers) is called
  FAIL (an entry FAILs or a claim is contradicted) in at most 5 % of trials; an arm whose
  MomentumBN teacher is 3.5 points low is called FAIL in at least 80 %.
- The same five numbers judged as equivalence entries (``expected ± 1.0``, the paper's single
  run as noisy as one of ours): the old rule |mean − paper| ≤ 1 failed a correct reproduction
  about 55 % of the time; TOST fails it at most 5 %, and still fails the 3.5-point miss.
- The CI gate (``--write-baseline`` regression entries from 10 seeds, 6 entries, false_alarm
  0.02, two new seeds per cell): a fresh correct run fails it in at most 2 % of trials (plus
  Monte Carlo error); a cell that loses its learning gain fails it with at least 90 % power.

Run with ``-s`` to print the measured rates (they are also the closing numbers of the judge's
documentation: baselines/README.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from suite.check.baseline import load_baselines
from suite.check.judge import judge_baselines, matches
from suite.check.metrics import UNITS
from suite.check.results import FAILED, Selection

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # M2T paper, Table 1: (student, teacher) -> linear top-1 %
    ("sync", "sync"): 88.06,
    ("local", "local"): 84.16,
    ("sync", "local"): 87.12,
    ("local", "sync"): 87.80,
    ("local", "momentum"): 88.18,
}
SEEDS = (0, 1, 2)
SD = 0.6  # points, per seed, on both sides


def selector_for(values: dict[tuple[str, str], list[float]], speed: dict | None = None):
    """A selector over fabricated cells: one cell per (arm, seed) with its linear top-1 (%) and
    images/s, as the judge's ``select`` gives them for a plan."""
    cells = []
    for arm, per_seed in values.items():
        for seed, top1 in zip(SEEDS, per_seed, strict=False):
            tree = {"student_bn": arm[0], "teacher_bn": arm[1], "seed": seed}
            flat = {**tree, "method.name": "byol"}
            ips = (speed or {}).get(arm, [1000.0] * len(SEEDS))[seed]
            cells.append((f"{arm[0]}-{arm[1]}-{seed}", tree, flat, top1 / 100.0, ips))

    def select(layer, metric, unit):
        chosen = [c for c in cells if matches(c[1], layer)]
        value = {"linear/top1": 3, "images_per_s": 4}[metric]
        scale = UNITS[unit]
        return Selection(
            tuple(c[0] for c in chosen),
            {c[0]: c[value] * scale for c in chosen},
            {c[0]: c[1]["seed"] for c in chosen},
            {c[0]: c[2] for c in chosen},
        )

    return select


def failed(baselines, values) -> bool:
    entries, relations = judge_baselines(baselines, selector_for(values), allow_missing=False)
    return any(r.verdict in FAILED for r in (*entries, *relations))


def draw(rng, truth: dict) -> dict:
    return {arm: list(mu + rng.normal(0.0, SD, size=len(SEEDS))) for arm, mu in truth.items()}


@pytest.fixture(scope="module")
def table1():
    return [load_baselines(ROOT / "baselines" / "paper.yaml")["stl10-table1"]]


def rate(trials: int, fn) -> float:
    return sum(fn(i) for i in range(trials)) / trials


TRIALS = 600


def test_table1_claims_rarely_fail_a_correct_reproduction(table1):
    rng = np.random.default_rng(20260)
    false_fail = rate(TRIALS, lambda _: failed(table1, draw(rng, PAPER)))
    print(f"\nTable 1 claims, correct reproduction: FAIL in {false_fail:.1%} of {TRIALS} trials")
    assert false_fail <= 0.05


def test_table1_claims_fail_a_momentum_teacher_35_points_low(table1):
    rng = np.random.default_rng(20261)
    low = {**PAPER, ("local", "momentum"): PAPER[("local", "momentum")] - 3.5}
    power = rate(TRIALS, lambda _: failed(table1, draw(rng, low)))
    print(f"\nTable 1 claims, local/momentum 3.5 points low: FAIL in {power:.1%} of {TRIALS}")
    assert power >= 0.80


def _absolute_section(tmp_path, expected: dict) -> list:
    entries = [
        {
            "match": {"student_bn": s, "teacher_bn": t},
            "expected": round(float(v), 3),
            "tolerance": 1.0,
        }
        for (s, t), v in expected.items()
    ]
    section = {"unit": "percent", "metric": "linear/top1", "pool_sd": True, "entries": entries}
    path = tmp_path / "absolute.yaml"
    path.write_text(yaml.safe_dump({"experiments": {"x": section}}))
    return [load_baselines(path)["x"]]


def test_absolute_table1_entries_as_tost_fix_the_55_percent_false_failure(tmp_path):
    """Each trial: the paper's five numbers are one run each (truth + seed noise), ours the mean
    of 3 seeds. The old rule failed at least one entry in about 55 % of correct reproductions;
    TOST (FAIL only when the CI lies wholly outside +-1) fails at most 5 %, and a 3.5-point
    miss of one arm still fails in at least 80 %."""
    rng = np.random.default_rng(20262)

    def trial(truth) -> tuple[bool, bool]:
        paper_run = {arm: PAPER[arm] + rng.normal(0.0, SD) for arm in PAPER}
        ours = draw(rng, truth)
        old = any(abs(np.mean(ours[a]) - paper_run[a]) > 1.0 for a in PAPER)
        return old, failed(_absolute_section(tmp_path, paper_run), ours)

    trials = 300
    correct = [trial(PAPER) for _ in range(trials)]
    old_rate = sum(o for o, _ in correct) / trials
    new_rate = sum(n for _, n in correct) / trials
    low = {**PAPER, ("local", "momentum"): PAPER[("local", "momentum")] - 3.5}
    power = sum(n for _, n in (trial(low) for _ in range(trials))) / trials
    print(
        f"\nTable 1 as absolute entries, correct reproduction: old rule FAIL {old_rate:.1%}, "
        f"TOST FAIL {new_rate:.1%}; one arm 3.5 low: TOST FAIL {power:.1%} ({trials} trials)"
    )
    assert old_rate > 0.4  # the problem the judge had
    assert new_rate <= 0.05 and power >= 0.80


# -- the CI gate -------------------------------------------------------------------------------
ARMS = {"byol": ("local", "sync"), "m2t": ("local", "momentum"), "mocov2": ("local", "shuffle")}
GATE = {  # configuration -> (metric, mean, sd) as the CI cells measure them (fractions / loss)
    "byol": [("linear/top1", 0.052, 0.011), ("images_per_s", 0.52, 0.11)],
    "m2t": [("linear/top1", 0.051, 0.010), ("images_per_s", 0.53, 0.05)],
    "mocov2": [("linear/top1", 0.067, 0.015), ("images_per_s", 4.52, 0.14)],
}
# images_per_s stands in for train/loss_final (a lower-is-better metric) in this fabricated
# selector: only its direction matters here, so it is written with side upper.


def _gate(tmp_path, rng, n: int = 10):
    entries = []
    for method, metrics in GATE.items():
        for metric, mean, sd in metrics:
            base = rng.normal(mean, sd, size=n)
            entries.append(
                {
                    "name": f"{method}: {metric}",
                    "kind": "regression",
                    "match": dict(zip(("student_bn", "teacher_bn"), ARMS[method], strict=True)),
                    "metric": metric,
                    "unit": "fraction" if metric == "linear/top1" else "value",
                    "side": "lower" if metric == "linear/top1" else "upper",
                    "expected": float(base.mean()),
                    "measured": {
                        "n": n,
                        "mean": float(base.mean()),
                        "std": float(base.std(ddof=1)),
                    },
                }
            )
    path = tmp_path / "gate.yaml"
    section = {"false_alarm": 0.02, "entries": entries}
    path.write_text(yaml.safe_dump({"experiments": {"ci": section}}))
    return [load_baselines(path)["ci"]]


NEW_RUNS = 2  # the seeds per cell that .ci/run trains (--seeds 0-1)


def _gate_run(rng, shift: dict | None = None) -> tuple[dict, dict]:
    """One new CI run (NEW_RUNS seeds per cell): linear gain and the loss stand-in."""
    top1, loss = {}, {}
    for method, ((_, m1, s1), (_, m2, s2)) in GATE.items():
        delta = (shift or {}).get(method, 0.0)
        top1[ARMS[method]] = list(100.0 * rng.normal(m1 - delta, s1, size=NEW_RUNS))
        loss[ARMS[method]] = [*rng.normal(m2, s2, size=NEW_RUNS), 0.0]
    return top1, loss


def _gate_fails(baselines, top1, loss) -> list[str]:
    select = selector_for(top1, speed=loss)
    entries, _ = judge_baselines(baselines, select, allow_missing=False)
    return [r.entry.label for r in entries if r.verdict == "FAIL"]


def test_ci_gate_false_alarm_rate_is_at_most_its_stated_2_percent(tmp_path):
    """A fresh correct run (each cell two new seeds from the same distribution as the 10-seed
    baseline, the baseline itself redrawn per trial) fails the 6-entry gate in <= 2 % of trials
    (+ 2 Monte Carlo standard errors)."""
    rng = np.random.default_rng(20263)
    trials = 600
    hits = 0
    for _ in range(trials):
        baselines = _gate(tmp_path, rng)
        hits += bool(_gate_fails(baselines, *_gate_run(rng)))
    alarm = hits / trials
    se = math.sqrt(0.02 * 0.98 / trials)
    print(f"\nCI gate, fresh correct run: false alarm {alarm:.2%} of {trials} trials")
    assert alarm <= 0.02 + 2 * se


def test_ci_gate_catches_a_cell_that_stops_learning(tmp_path):
    """A BYOL cell whose linear gain drops to zero (a 5.2-point loss, 4.7 of its seed sds) over
    the gate's two seeds fails it with >= 90 % power; the 90 %-power shift the baseline header
    states for the entry is below that loss (with one seed per cell it is not: 5.9 points)."""
    from suite.check import stats as st

    rng = np.random.default_rng(20264)
    trials = 300
    hits = 0
    for _ in range(trials):
        baselines = _gate(tmp_path, rng)
        fails = _gate_fails(baselines, *_gate_run(rng, shift={"byol": 0.052}))
        hits += "byol: linear/top1" in fails
    power = hits / trials
    shift = st.detectable_shift(0.011, 10, NEW_RUNS, 0.02 / 6)
    print(f"\nCI gate, BYOL gain lost: caught in {power:.1%}; 90 %-power shift {shift:.4f}")
    assert power >= 0.9 and shift < 0.052
