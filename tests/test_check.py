"""The judge: baseline files, the relation grammar, matching, aggregation, verdicts, exit codes,
``--write-baseline``, ``plan --json`` and the paper's baselines.

Runs are fabricated in a real MLflow store (one run per cell, tagged with its id, with the metrics
a cell logs); the gate's own test, with real training, is in ``test_gate.py``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli, write_experiment
from scipy import stats as scipy_stats

from suite.check import BaselineError, load_baselines, parse_relation
from suite.check.relation import RelationSyntaxError
from suite.config import load_experiment
from suite.tracking import CELL_TAG
from suite.tracking.store import open_client
from suite.tracking.tracker import EXPERIMENT_TAG

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "batch_size": 32,
    "devices": 4,
    "matrix": {"bn": [["sync", "sync"], ["local", "local"], ["local", "momentum"]]},
    "include": [{"method": "m2t"}],
    "seeds": [0, 1, 2],
}


def record(uri: str, experiment, cell, metrics: dict[str, float], status: str = "FINISHED"):
    """A run of ``cell`` in ``uri`` as the runner records it (tags, metrics, end status)."""
    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, tags={CELL_TAG: cell.cell_id, EXPERIMENT_TAG: experiment})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def label(cell) -> str:
    return f"{cell.method.name}:{cell.student_bn}/{cell.teacher_bn}"


# per configuration, per seed: linear/top1 (fraction), knn/top1, its floor and images/s
TRUTH = {
    "byol:sync/sync": [0.880, 0.882, 0.878],
    "byol:local/local": [0.840, 0.845, 0.835],
    "byol:local/momentum": [0.881, 0.884, 0.879],
    "m2t:local/momentum": [0.885, 0.887, 0.889],
}


def make_judged(folder: Path, uri: str):
    """An experiment file with 12 cells and a finished run for each (values from TRUTH)."""
    path = write_experiment(folder, "judged", BASE)
    exp = load_experiment(path)
    for cell in exp.cells():
        top1 = TRUTH[label(cell)][cell.seed]
        record(
            uri,
            exp.name,
            cell,
            {
                "linear/top1": top1,
                "knn/top1": top1 - 0.02,
                "knn/top1_random_init": 0.30,
                "images_per_s": 100.0 + cell.seed,
            },
        )
    return path, exp, uri


@pytest.fixture(scope="module")
def judged_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judged")
    return make_judged(folder, f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture
def judged(judged_store, monkeypatch):
    """The module's 12 finished cells, read-only: the store is the default tracking URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", judged_store[2])
    return judged_store


@pytest.fixture
def judged_own(tmp_path, mlflow_tmp):
    """Like ``judged``, in a store of the test's own (for tests that add runs)."""
    return make_judged(tmp_path, mlflow_tmp)


def baseline(tmp_path: Path, experiment: str = "judged", **section) -> Path:
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump({"experiments": {experiment: section}}, sort_keys=False))
    return path


def check(path, base, *extra) -> tuple[int, dict]:
    code, out, err = cli("check", str(path), "--baseline", str(base), "--json", *extra)
    assert code != 2, err
    return code, json.loads(out)


# -- the relation grammar --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "means", "lhs", "rhs", "direction"),
    [
        ("local/local < sync/sync", {"local/local": 84.0, "sync/sync": 88.0}, 84.0, 88.0, "<"),
        (
            "local/momentum >= sync/sync - 0.5",
            {"local/momentum": 87.6, "sync/sync": 88.0},
            87.6,
            87.5,
            ">",
        ),
        (
            "local/momentum >= 0.97 * local/local",
            {"local/momentum": 96.0, "local/local": 100.0},
            96.0,
            97.0,
            ">",
        ),
        ("a - b * 2 > -(c + 1)", {"a": 5.0, "b": 1.0, "c": 1.0}, 3.0, -2.0, ">"),
        ("(a) / (b) ~= 2", {"a": 4.0, "b": 2.0}, 2.0, 2.0, "~"),
        ("a/b <= 1.5e0", {"a": 3.0, "b": 2.0}, 1.5, 1.5, "<"),
    ],
)
def test_relation_evaluates_groups_numbers_and_precedence(text, means, lhs, rhs, direction):
    rel = parse_relation(text)
    left, right = rel.sides(means)
    assert math.isclose(left, lhs) and math.isclose(right, rhs)
    assert rel.direction == direction and math.isclose(rel.contrast(means), lhs - rhs)
    assert {g.name for g in rel.groups()} == set(means)


def test_relation_gradient_is_each_groups_weight_in_the_contrast():
    rel = parse_relation("local/sync - local/local > 0.5 * (sync/sync - local/local)")
    means = {"local/sync": 87.8, "local/local": 84.2, "sync/sync": 88.1}
    grad = rel.gradient(means)
    assert grad == pytest.approx({"local/sync": 1.0, "local/local": -0.5, "sync/sync": -0.5})
    ratio = parse_relation("(a) / (b) > 1").gradient({"a": 3.0, "b": 2.0})
    assert ratio == pytest.approx({"a": 0.5, "b": -0.75}, rel=1e-6)


def test_relation_reads_strategy_pairs_as_groups_and_other_names_as_division():
    pair = parse_relation("local/momentum > sync/sync").groups()
    assert [(g.name, g.pair) for g in pair] == [
        ("local/momentum", ("local", "momentum")),
        ("sync/sync", ("sync", "sync")),
    ]
    named = parse_relation("small/large > 1").groups()
    assert [(g.name, g.pair) for g in named] == [("small", None), ("large", None)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("local/local sync/sync", "expected a comparison"),
        ("local/local <", "expected a number or a group"),
        ("local/local < sync/sync sync/sync", "expected the end of the relation"),
        ("local/momentun > sync/sync", "'momentun' is not a BN strategy"),
        ("__import__('os') > 1", "unexpected"),
        ("a < (b", r"expected '\)'"),
        ("a == b", "unexpected '='"),
        ("", "is not a relation"),
    ],
)
def test_relation_syntax_errors_say_what_was_expected(text, message):
    with pytest.raises(RelationSyntaxError, match=message):
        parse_relation(text)


# -- baseline files ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (
            {
                "entries": [
                    {"metric": "linear/top1", "expected": 0.9, "tolerance": 0.1, "tolerence": 1}
                ]
            },
            "entries[0].tolerence: unknown key; valid keys: .* .*did you mean 'tolerance'",
        ),
        (
            {"entries": [{"match": {"teacher": "sync"}, "metric": "linear/top1", "min": 0.5}]},
            "entries[0].match.teacher: unknown key; .*did you mean 'teacher_bn'",
        ),
        (
            {
                "entries": [
                    {"match": {"teacher_bn": "momentun"}, "metric": "linear/top1", "min": 0.5}
                ]
            },
            "entries[0].match.teacher_bn: 'momentun' .*did you mean 'momentum'",
        ),
        (
            {"entries": [{"metric": "linaer/top1", "min": 0.5}]},
            "entries[0].metric: 'linaer/top1' is not a metric.*did you mean 'linear/top1'",
        ),
        (
            {"entries": [{"metric": "linear/top1", "expected": 0.9}]},
            "entries[0].tolerance: missing; expected 0.9 needs a tolerance",
        ),
        (
            {"entries": [{"metric": "images_per_s", "unit": "percent", "min": 1}]},
            "entries[0].unit: 'percent' is not a unit of images_per_s; choose from value",
        ),
        (
            {"entries": [{"metric": "linear/top1", "min": 0.5, "side": "down"}]},
            "entries[0].side: 'down' is invalid; choose from both, lower, upper",
        ),
        ({"entries": [{"metric": "linear/top1"}]}, "entries[0]: nothing to check"),
        (
            {"metric": "linear/top1", "relations": ["local/local << sync/sync"]},
            "relations[0].relation: unexpected|expected a number or a group",
        ),
        (
            {"metric": "linear/top1", "relations": [{"relation": "a < b", "groups": {"a": {}}}]},
            "group 'b' is neither a student/teacher pair nor a key of groups",
        ),
        ({"relations": ["local/local < sync/sync"]}, "relations[0]: no metric"),
        ({}, "no entries and no relations"),
        (
            {"entries": [{"metric": "linear/top1", "expected": float("nan"), "tolerance": 0.1}]},
            "entries[0].expected: .*nan.* is not a finite number",
        ),
        (
            {"entries": [{"metric": "linear/top1", "expected": 0.9, "tolerance": float("inf")}]},
            "entries[0].tolerance: .*inf.* is not a finite number",
        ),
        (
            {"entries": [{"metric": "linear/top1", "expected": "high", "tolerance": 0.1}]},
            "entries[0].expected: 'high' is not a number",
        ),
        (
            {"entries": [{"metric": "linear/top1", "expected": 0.9, "kind": "equivalnce"}]},
            "entries[0].kind: 'equivalnce' is invalid; choose from equivalence, bound, "
            "regression, reference.*did you mean 'equivalence'",
        ),
        (
            {"entries": [{"metric": "linear/top1", "kind": "regression", "side": "lower"}]},
            "entries[0].measured: kind regression needs n >= 2",
        ),
        (
            {"entries": [{"metric": "linear/top1", "min": 0.5, "ref_sd": "a lot"}]},
            "entries[0].ref_sd: 'a lot' is not a number or 'measured'",
        ),
        (
            {"metric": "linear/top1", "alpha": 0.9, "relations": ["local/local < sync/sync"]},
            "alpha: 0.9 is not a level in",
        ),
        (
            {"metric": "linear/top1", "relations": ["local/momentum ~= sync/sync"]},
            "relations[0].margin: missing; .*needs the margin",
        ),
        (
            {
                "metric": "linear/top1",
                "relations": [{"relation": "local/local < sync/sync", "margin": 1}],
            },
            "relations[0].margin: only a ~= relation has a margin",
        ),
    ],
)
def test_bad_baseline_names_file_entry_path_and_value(tmp_path, section, problem):
    path = baseline(tmp_path, **section)
    with pytest.raises(BaselineError) as info:
        load_baselines(path)
    text = "\n".join(info.value.errors)
    assert str(path) in text and "experiments.judged" in text
    pattern = problem.replace("[0]", r"\[0\]")
    assert any(re.search(pattern, line) for line in info.value.errors), text


def test_a_bad_tolerance_or_expected_is_named_once_not_also_called_missing(tmp_path):
    bad = [
        {"metric": "linear/top1", "expected": 0.9, "tolerance": -0.1},
        {"metric": "linear/top1", "expected": "high", "tolerance": 0.1},
    ]
    with pytest.raises(BaselineError) as info:
        load_baselines(baseline(tmp_path, entries=bad))
    text = "\n".join(info.value.errors)
    assert "entries[0].tolerance: -0.1 is below 0" in text
    assert "tolerance: missing" not in text and "expected is null" not in text


def test_bad_baseline_is_exit_2_before_anything_is_read(tmp_path, mlflow_tmp):
    exp = write_experiment(tmp_path, "judged", BASE)
    base = baseline(tmp_path, entries=[{"metric": "linear/top1", "min": 0.5, "mathc": {}}])
    code, out, err = cli("check", str(exp), "--baseline", str(base))
    assert code == 2 and out == ""
    assert "entries[0].mathc: unknown key" in err and "did you mean 'match'" in err


def test_unknown_top_level_key_and_missing_experiments_are_reported(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("paper: x\n")
    with pytest.raises(BaselineError) as info:
        load_baselines(path)
    assert any("paper: unknown key" in e for e in info.value.errors)
    assert any("experiments:" in e for e in info.value.errors)


# -- matching, aggregation, verdicts -----------------------------------------------------------
def test_entry_aggregates_the_seeds_of_the_cells_it_selects(tmp_path, judged):
    path, exp, _ = judged
    base = baseline(
        tmp_path,
        entries=[
            {
                "match": {"student_bn": "local", "teacher_bn": "local"},
                "metric": "linear/top1",
                "expected": 84.0,
                "tolerance": 3.0,
                "unit": "percent",
            }
        ],
    )
    code, data = check(path, base)
    (entry,) = data["entries"]
    values = [100 * v for v in TRUTH["byol:local/local"]]
    assert entry["n"] == 3 and len(entry["cells"]) == 3
    assert entry["mean"] == pytest.approx(statistics.fmean(values))
    assert entry["std"] == pytest.approx(statistics.stdev(values))
    assert entry["delta"] == pytest.approx(statistics.fmean(values) - 84.0)
    assert entry["verdict"] == "reproduced" and code == 0


def test_match_uses_resolved_values_so_m2t_defaults_count(tmp_path, judged):
    path, exp, _ = judged
    base = baseline(
        tmp_path,
        metric="linear/top1",
        entries=[
            {"match": {"student_bn": "local", "teacher_bn": "momentum"}, "min": 0},
            {"match": {"method": "m2t"}, "min": 0},
            {"match": {"method": {"name": "byol"}, "teacher_bn": "momentum"}, "min": 0},
            {"match": {"dataset.name": "synthetic", "seed": 1}, "min": 0},
        ],
    )
    _, data = check(path, base)
    ids = {label(c): [] for c in exp.cells()}
    for c in exp.cells():
        ids[label(c)].append(c.cell_id)
    both, m2t, byol_mom, seed1 = (set(e["cells"]) for e in data["entries"])
    assert both == set(ids["byol:local/momentum"] + ids["m2t:local/momentum"])
    assert m2t == set(ids["m2t:local/momentum"])
    assert byol_mom == set(ids["byol:local/momentum"])
    assert seed1 == {c.cell_id for c in exp.cells() if c.seed == 1}


def test_entry_that_selects_no_cell_is_an_error_not_missing(tmp_path, judged):
    path, _, _ = judged
    base = baseline(
        tmp_path,
        entries=[
            {
                "match": {"student_bn": "sync", "teacher_bn": "local"},
                "metric": "linear/top1",
                "min": 0.5,
            }
        ],
    )
    code, out, err = cli("check", str(path), "--baseline", str(base))
    assert code == 2
    assert "entries[0].match: student_bn=sync, teacher_bn=local selects no cell" in err


# byol sync/sync: 0.880, 0.882, 0.878 (mean 0.880, sd 0.002, 3 seeds: se 0.00115, t(0.95, 2)
# 2.92): the mean's 90 % CI is 0.880 +- 0.0034; against a paper-like single run with the same sd
# (ref_sd "measured", the default of expected +- tolerance) the difference's CI is +- 0.0067.
@pytest.mark.parametrize(
    ("bounds", "verdict"),
    [
        ({"expected": 0.88, "tolerance": 0.01}, "reproduced"),
        ({"expected": 0.88, "tolerance": 0.005}, "inconclusive"),  # CI +-0.0067 > margin
        ({"expected": 0.88, "tolerance": 0.005, "ref_sd": 0}, "reproduced"),  # no ref noise
        ({"expected": 0.89, "tolerance": 0.005}, "inconclusive"),  # CI [-0.017, -0.003]
        ({"expected": 0.90, "tolerance": 0.005}, "FAIL"),  # CI wholly below -0.005
        ({"expected": 0.86, "tolerance": 0.005}, "FAIL"),  # better than expected: both sides
        ({"expected": 0.87, "tolerance": 0.005, "side": "lower"}, "pass"),
        ({"expected": 0.89, "tolerance": 0.005, "side": "upper"}, "pass"),
        ({"expected": 0.89, "tolerance": 0.005, "side": "lower"}, "FAIL"),
        ({"min": 0.87}, "pass"),
        ({"min": 0.879}, "inconclusive"),  # the mean is above it, its CI is not
        ({"min": 0.885}, "FAIL"),
        ({"max": 0.89}, "pass"),
        ({"min": 0.5, "max": 0.879}, "inconclusive"),
        ({"min": 0.5, "max": 0.87}, "FAIL"),
        ({"min": 0.879, "sd": 0.0001}, "pass"),  # a stated sd replaces the seeds' spread
        ({"expected": None}, "reference"),
        ({"reference": 0.85}, "reference"),
        ({"expected": 0.88, "tolerance": 0.01, "source_metric": "linear/best_top1"}, "reference"),
    ],
)
def test_each_verdict_form(tmp_path, judged, bounds, verdict):
    path, _, _ = judged
    entry = {"match": {"student_bn": "sync"}, "metric": "linear/top1", **bounds}
    code, data = check(path, baseline(tmp_path, entries=[entry]))
    assert data["entries"][0]["verdict"] == verdict
    assert code == (1 if verdict == "FAIL" else 0)
    code, _ = check(path, baseline(tmp_path, entries=[entry]), "--strict")
    assert code == (1 if verdict in ("FAIL", "inconclusive") else 0)


def test_equivalence_is_tost_on_the_mean_minus_expected_with_the_reference_runs_noise(
    tmp_path, judged
):
    """reproduced iff the 90 % CI of (mean - expected) lies inside +-tolerance; the error is
    sd * sqrt(1/n + 1/ref_n) with the seeds' sd and df n - 1 (the paper's run assumed as noisy
    as ours), or sqrt(sd^2/n + ref_sd^2/ref_n) with a stated ref_sd (Welch-Satterthwaite df)."""
    path, _, _ = judged
    values = [100 * v for v in TRUTH["byol:sync/sync"]]
    mean, sd, n = statistics.fmean(values), statistics.stdev(values), len(values)
    entries = [
        {"expected": 87.9, "tolerance": 1.0},
        {"expected": 87.9, "tolerance": 1.0, "ref_sd": 0.6, "ref_sd_source": "assumed"},
    ]
    base = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        entries=[{"match": {"student_bn": "sync"}, **e} for e in entries],
    )
    _, data = check(path, base)
    same, stated = (e["test"] for e in data["entries"])
    se = sd * math.sqrt(1 / n + 1)
    half = scipy_stats.t.ppf(0.95, n - 1) * se
    assert same["se"] == pytest.approx(se) and same["df"] == n - 1
    assert same["ci"] == pytest.approx([mean - 87.9 - half, mean - 87.9 + half])
    p_lo = scipy_stats.t.sf((mean - 87.9 + 1.0) / se, n - 1)
    p_hi = scipy_stats.t.cdf((mean - 87.9 - 1.0) / se, n - 1)
    assert same["p"] == pytest.approx(max(p_lo, p_hi))
    se2 = math.sqrt(sd**2 / n + 0.6**2)
    df2 = (sd**2 / n + 0.36) ** 2 / ((sd**2 / n) ** 2 / (n - 1))
    assert stated["se"] == pytest.approx(se2) and stated["df"] == pytest.approx(df2)
    assert "assumed" in stated["noise"]
    # 0.6 on a single paper run: no number of seeds reaches +-1 at 90 % (1.645 * 0.6 ~ 0.99)
    assert data["entries"][1]["verdict"] == "inconclusive" and stated["undecidable"]


def test_an_inconclusive_entry_says_how_many_seeds_would_decide_it(tmp_path, judged):
    path, _, _ = judged
    entry = {"match": {"student_bn": "sync"}, "metric": "linear/top1", "min": 0.879}
    _, data = check(path, baseline(tmp_path, entries=[entry]))
    (row,) = data["entries"]
    need = row["test"]["seeds_to_decide"]
    assert row["verdict"] == "inconclusive" and need > 3
    assert row["reason"] == f"about {need} seeds would decide it at this spread"
    # the claim: at `need` seeds the CI's lower end clears 0.879, at need - 1 it does not
    mean, sd = 0.880, statistics.stdev(TRUTH["byol:sync/sync"])

    def lower(k: int) -> float:
        return mean - scipy_stats.t.ppf(0.95, k - 1) * sd / math.sqrt(k)

    assert lower(need) > 0.879 >= lower(need - 1)


def test_pooled_sd_uses_the_arms_of_one_design(tmp_path, judged):
    path, _, _ = judged
    arms = [["sync", "sync"], ["local", "local"], ["local", "momentum"]]
    base = baseline(
        tmp_path,
        metric="linear/top1",
        pool_sd=True,
        entries=[{"match": {"method": "byol", "bn": bn}, "min": 0.5} for bn in arms],
    )
    _, data = check(path, base)
    groups = [TRUTH[f"byol:{s}/{t}"] for s, t in arms]
    ss = sum(statistics.variance(g) * (len(g) - 1) for g in groups)
    pooled = math.sqrt(ss / 6)
    for row in data["entries"]:
        assert row["test"]["se"] == pytest.approx(pooled / math.sqrt(3))
        assert row["test"]["df"] == 6 and "pooled over 3 arms" in row["test"]["noise"]


def test_gain_is_the_accuracy_minus_the_same_cells_floor(tmp_path, judged):
    path, _, _ = judged
    entry = {"match": {"student_bn": "sync"}, "metric": "knn/top1_gain", "min": 0.5}
    _, data = check(path, baseline(tmp_path, entries=[entry]))
    expected = statistics.fmean(v - 0.02 - 0.30 for v in TRUTH["byol:sync/sync"])
    assert data["entries"][0]["mean"] == pytest.approx(expected)


def test_missing_runs_fail_unless_allowed_and_partial_groups_are_judged_on_what_exists(
    tmp_path, mlflow_tmp
):
    path = write_experiment(tmp_path, "partial", BASE)
    exp = load_experiment(path)
    for cell in exp.cells():
        if label(cell) == "byol:sync/sync" and cell.seed == 2:
            record(mlflow_tmp, exp.name, cell, {"linear/top1": 0.1}, status="FAILED")
            continue
        if label(cell) == "byol:local/local":
            continue  # no run at all
        record(mlflow_tmp, exp.name, cell, {"linear/top1": TRUTH[label(cell)][cell.seed]})
    base = baseline(
        tmp_path,
        experiment="partial",
        metric="linear/top1",
        entries=[
            {"match": {"bn": ["sync", "sync"]}, "min": 0.85},
            {"match": {"bn": ["local", "local"]}, "min": 0.5},
        ],
        relations=["local/local < sync/sync"],
    )
    code, data = check(path, base)
    assert code == 1
    assert [e["verdict"] for e in data["entries"]] == ["missing", "missing"]
    assert data["entries"][0]["n"] == 2 and len(data["entries"][0]["missing_cells"]) == 1
    assert data["relations"][0]["verdict"] == "missing"
    code, data = check(path, base, "--allow-missing")
    assert code == 0
    sync = data["entries"][0]
    assert sync["verdict"] == "pass" and sync["n"] == 2  # the FAILED run does not count
    assert sync["mean"] == pytest.approx(statistics.fmean(TRUTH["byol:sync/sync"][:2]))
    assert data["entries"][1]["verdict"] == "missing"


def test_relations_are_paired_per_seed_one_sided_and_holm_adjusted(tmp_path, judged):
    """Arms that share seeds are compared on their per-seed differences (a paired t-test), one
    side for a directional claim; the p-values are Holm-adjusted over the experiment."""
    path, _, _ = judged
    base = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        relations=[
            {"relation": rel, "match": {"method": "byol"}, **extra}
            for rel, extra in (
                ("local/local < sync/sync", {}),  # -4 points, holds
                ("local/local > sync/sync", {}),  # the same data, the other way: contradicted
                ("local/momentum > sync/sync", {}),  # +0.13: p 0.03 alone, not after Holm
                ("local/momentum ~= sync/sync", {"margin": 1.0}),  # equal within 1 point
            )
        ],
    )
    code, data = check(path, base)
    verdicts = [r["verdict"] for r in data["relations"]]
    assert verdicts == ["holds", "contradicted", "inconclusive", "holds"] and code == 1
    first = data["relations"][0]
    assert first["pairing"] == "paired by seed (3 pairs)"
    local = [100 * v for v in TRUTH["byol:local/local"]]
    sync = [100 * v for v in TRUTH["byol:sync/sync"]]
    mom = [100 * v for v in TRUTH["byol:local/momentum"]]
    ref = scipy_stats.ttest_rel(local, sync, alternative="less")
    raw = [
        ref.pvalue,
        scipy_stats.ttest_rel(local, sync, alternative="greater").pvalue,
        scipy_stats.ttest_rel(mom, sync, alternative="greater").pvalue,
    ]
    diff = [x - y for x, y in zip(mom, sync, strict=True)]
    tost = max(
        scipy_stats.ttest_1samp(diff, -1.0, alternative="greater").pvalue,
        scipy_stats.ttest_1samp(diff, 1.0, alternative="less").pvalue,
    )
    raw.append(tost)
    assert first["difference"]["value"] == pytest.approx(
        statistics.fmean(local) - statistics.fmean(sync)
    )
    assert first["difference"]["df"] == 2
    # Holm over the four claims
    order = sorted(range(4), key=lambda i: raw[i])
    holm, running = [0.0] * 4, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * raw[i]))
        holm[i] = running
    assert [r["p_holm"] for r in data["relations"]] == pytest.approx(holm, rel=1e-6)
    close = data["relations"][2]
    assert raw[2] < 0.05 < close["p_holm"]
    assert "after Holm's adjustment over 4 relations" in close["reason"]
    code, out, _ = cli("check", str(path), "--baseline", str(base))
    assert "paired by seed (3 pairs)" in out and "contradicted" in out


def test_relation_between_groups_without_shared_seeds_uses_welch(tmp_path, judged):
    path, _, _ = judged
    base = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        relations=[
            {
                "relation": "early < late",
                "match": {"method": "byol", "bn": ["local", "local"]},
                "groups": {"early": {"seed": 0}, "late": {"seed": 2}},
            },
            {
                "relation": "a > b",
                "groups": {
                    "a": {"method": "m2t"},
                    "b": {"method": "byol", "bn": ["sync", "sync"]},
                },
            },
        ],
    )
    _, data = check(path, base)
    one_each, m2t = data["relations"]
    assert one_each["verdict"] == "inconclusive" and "1 value, no spread" in one_each["reason"]
    # m2t and byol sync/sync share seeds 0-2: paired by seed even across methods
    assert m2t["pairing"] == "paired by seed (3 pairs)"
    base2 = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        relations=[
            {
                "relation": "a > b",
                "groups": {
                    "a": {"method": "m2t", "seed": 1},
                    "b": {"method": "byol", "bn": ["sync", "sync"]},
                },
            },
            {
                "relation": "a > b",
                "groups": {"a": {"teacher_bn": "momentum"}, "b": {"bn": ["sync", "sync"]}},
            },
        ],
    )
    _, data = check(path, base2)
    single, welch = data["relations"]
    assert single["verdict"] == "inconclusive"
    # teacher_bn momentum selects byol and m2t at every seed: two per seed, so no pairing
    assert welch["pairing"] == "unpaired (Welch)"
    a = [100 * v for v in TRUTH["byol:local/momentum"] + TRUTH["m2t:local/momentum"]]
    b = [100 * v for v in TRUTH["byol:sync/sync"]]
    ref = scipy_stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert welch["difference"]["p"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert welch["difference"]["df"] == pytest.approx(ref.df, rel=1e-6)


def test_check_table_names_failed_entries_and_exit_1(tmp_path, judged):
    path, _, _ = judged
    base = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        entries=[
            {
                "name": "sync row",
                "match": {"bn": ["sync", "sync"]},
                "expected": 88.0,
                "tolerance": 1.0,
            },
            {
                "name": "local row",
                "match": {"bn": ["local", "local"]},
                "expected": 88.0,
                "tolerance": 1.0,
            },
        ],
    )
    code, out, _ = cli("check", str(path), "--baseline", str(base))
    assert code == 1
    assert "1 reproduced, 1 FAIL, 0 missing" in out
    assert "failed: E2 local row" in out


def test_default_baselines_are_the_files_beside_the_experiments_folder(tmp_path, judged):
    path, _, _ = judged
    (tmp_path / "experiments").mkdir()
    moved = tmp_path / "experiments" / path.name
    moved.write_text(path.read_text())
    (tmp_path / "baselines").mkdir()
    other = {"experiments": {"someone-else": {"entries": [{"metric": "linear/top1", "min": 0}]}}}
    (tmp_path / "baselines" / "a.yaml").write_text(yaml.safe_dump(other))
    mine = {"experiments": {"judged": {"entries": [{"metric": "linear/top1", "min": 0.99}]}}}
    (tmp_path / "baselines" / "b.yaml").write_text(yaml.safe_dump(mine))
    code, out, _ = cli("check", str(moved))
    assert code == 1 and "b.yaml" in out and "a.yaml" not in out
    (tmp_path / "baselines" / "b.yaml").unlink()
    code, _, err = cli("check", str(moved))
    assert code == 2 and "no baseline holds expectations for experiment 'judged'" in err


# -- --write-baseline ------------------------------------------------------------------------------
def test_write_baseline_writes_the_measured_rule_and_check_passes_then_catches_a_regression(
    tmp_path, judged_own
):
    path, exp, uri = judged_own
    out = tmp_path / "written.yaml"
    code, stdout, err = cli(
        "check",
        str(path),
        "--write-baseline",
        str(out),
        "--metric",
        "linear/top1",
        "--metric",
        "images_per_s",
        "--json",
    )
    assert code == 0, err
    text = out.read_text()
    assert "prediction bound" in text and "fails the gate with probability <= 0.02" in text
    written = yaml.safe_load(text)["experiments"]["judged"]
    assert written["false_alarm"] == 0.02
    written = written["entries"]
    assert len(written) == 4 * 2 and {e["kind"] for e in written} == {"regression"}
    # the fewest keys that tell the configurations apart, method first
    local = next(
        e
        for e in written
        if e["match"] == {"method": "byol", "student_bn": "local", "teacher_bn": "local"}
        and e["metric"] == "linear/top1"
    )
    values = TRUTH["byol:local/local"]
    assert local["expected"] == pytest.approx(statistics.fmean(values), rel=1e-5)
    assert local["measured"]["std"] == pytest.approx(statistics.stdev(values), rel=1e-5)
    assert local["side"] == "lower" and local["measured"]["n"] == 3
    assert local["measured"]["df"] == 2 and local["measured"]["seeds"] == [0, 1, 2]
    assert "tolerance" not in local
    data = json.loads(stdout)
    assert data["exit_code"] == 0
    # each entry's threshold: the prediction bound for the mean of the 3 runs, alpha 0.02 / 8
    row = next(r for r in data["entries"] if r["label"] == local["name"])
    sd = local["measured"]["std"]
    bound = local["measured"]["mean"] - scipy_stats.t.ppf(1 - 0.02 / 8, 2) * sd * math.sqrt(
        1 / 3 + 1 / 3
    )
    assert row["alpha"] == pytest.approx(0.02 / 8) and row["threshold"] == pytest.approx(bound)
    speed = next(r for r in data["entries"] if r["metric"] == "images_per_s")
    assert speed["verdict"] == "pass"
    # a later run of one cell drops to 0.50: the mean of the three crosses the bound (a 5-point
    # drop would not: t(1 - 0.0025, 2 df) = 14 makes a 3-seed baseline a weak gate)
    cell = next(c for c in exp.cells() if label(c) == "byol:local/local" and c.seed == 0)
    record(uri, exp.name, cell, {"linear/top1": 0.50, "images_per_s": 100.0})
    code, data = check(path, out)
    failed = [e for e in data["entries"] if e["verdict"] == "FAIL"]
    assert code == 1 and [(f["match"], f["metric"]) for f in failed] == [
        ("method=byol, student_bn=local, teacher_bn=local", "linear/top1")
    ]


def test_write_baseline_keeps_relations_and_rejects_a_broken_file(tmp_path, judged):
    path, _, _ = judged
    out = baseline(tmp_path, metric="linear/top1", relations=["local/local < sync/sync"])
    code, _, err = cli("check", str(path), "--write-baseline", str(out), "--metric", "linear/top1")
    assert code == 0, err
    section = yaml.safe_load(out.read_text())["experiments"]["judged"]
    assert section["relations"] == ["local/local < sync/sync"] and section["entries"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiments: {judged: {entries: [{metric: nope, min: 1}]}}\n")
    before = broken.read_text()
    code, _, err = cli("check", str(path), "--write-baseline", str(broken))
    assert code == 2 and "'nope' is not a metric" in err and broken.read_text() == before


def test_written_entries_state_their_unit_so_a_percent_section_cannot_misread_them(
    tmp_path, judged
):
    """A section whose default unit is percent (as the paper's) gets measured entries in the
    logged unit, stated on each: judged again they pass with delta 0, and a regression of 5
    points would fail (the threshold is in the same unit as the value)."""
    path, _, _ = judged
    out = baseline(
        tmp_path, unit="percent", metric="linear/top1", relations=["local/local < sync/sync"]
    )
    code, _, err = cli("check", str(path), "--write-baseline", str(out), "--metric", "linear/top1")
    assert code == 0, err
    entries = yaml.safe_load(out.read_text())["experiments"]["judged"]["entries"]
    assert entries and {e["unit"] for e in entries} == {"fraction"}
    code, data = check(path, out)
    judged_entries = [e for e in data["entries"] if e["kind"] == "regression"]
    assert judged_entries and all(e["verdict"] == "pass" for e in judged_entries)
    assert all(e["unit"] == "fraction" and abs(e["delta"]) < 1e-5 for e in judged_entries)
    assert all(0.5 < e["threshold"] < e["expected"] for e in judged_entries)  # a fraction bound


# -- plan --json ---------------------------------------------------------------------------
def test_plan_json_lists_ids_axes_values_status_and_metrics(tmp_path, judged):
    path, exp, _ = judged
    code, out, _ = cli("plan", str(path), "--json")
    data = json.loads(out)
    assert code == 0 and data["experiment"] == "judged" and data["total"] == 12
    assert [c["cell_id"] for c in data["cells"]] == [c.cell_id for c in exp.cells()]
    first = data["cells"][0]
    assert (
        first["status"] == "done" and first["metrics"]["linear/top1"] == TRUTH["byol:sync/sync"][0]
    )
    assert first["values"]["student_bn"] == "sync" and first["axes"]["seed"] == 0
    assert "seed" in data["fields"]


def test_seeds_override_repeats_every_cell_over_the_given_seeds(tmp_path, mlflow_tmp):
    path = write_experiment(
        tmp_path, "one", {**{k: v for k, v in BASE.items() if k != "seeds"}, "seed": 0}
    )
    code, out, _ = cli("plan", str(path), "--json", "--seeds", "0-2,5")
    cells = json.loads(out)["cells"]
    assert len(cells) == 4 * 4 and sorted({c["values"]["seed"] for c in cells}) == [0, 1, 2, 5]
    code, _, err = cli("plan", str(path), "--seeds", "3-1")
    assert code == 2 and "'3-1' is not a seed list" in err


# -- the paper's baselines ---------------------------------------------------------------
PAPER_TABLE1 = {  # student/teacher -> linear top-1 %, M2T paper Table 1
    ("sync", "sync"): 88.06,
    ("local", "local"): 84.16,
    ("sync", "local"): 87.12,
    ("local", "sync"): 87.80,
    ("local", "momentum"): 88.18,
}


@pytest.mark.parametrize("name", ["stl10_table1", "imagenet_r50", "imagenet_r50_readme"])
def test_paper_baseline_entries_all_select_cells_of_their_experiment(name, mlflow_tmp):
    code, out, err = cli(
        "check",
        str(ROOT / "experiments" / f"{name}.yaml"),
        "--baseline",
        str(ROOT / "baselines" / "paper.yaml"),
        "--json",
    )
    assert code == 1, err  # no runs: every judged entry is missing, none is an error
    data = json.loads(out)
    judged = [e for e in data["entries"] if e["kind"] != "reference"]
    assert data["counts"]["missing"] == len(judged) + len(data["relations"])
    assert data["counts"]["reference"] == len(data["entries"]) - len(judged)
    assert all(e["cells"] for e in data["entries"])


# fixed per-(arm, seed) noise, sd about 0.3 points: a reproduction is never noise-free
TABLE1_NOISE = [0.31, -0.22, -0.09, 0.12, 0.40, -0.35, -0.27, 0.05, 0.19, 0.33, -0.18, -0.10, 0.02]


def _table1_runs(uri: str, rows: dict[tuple[str, str], float]) -> None:
    exp = load_experiment(ROOT / "experiments" / "stl10_table1.yaml", env={"DATA": "/nowhere"})
    for i, cell in enumerate(exp.cells()):
        top1 = rows[(cell.student_bn, cell.teacher_bn)] + TABLE1_NOISE[i % len(TABLE1_NOISE)]
        record(uri, exp.name, cell, {"linear/top1": top1 / 100, "images_per_s": 1000.0 + i})


def test_table1_check_holds_the_papers_claims_on_runs_that_reproduce_it(mlflow_tmp):
    """Runs at the paper's numbers (plus seed noise): its claims hold, its absolute numbers are
    references (shown with the difference, never judged), nothing fails."""
    _table1_runs(mlflow_tmp, PAPER_TABLE1)
    code, out, err = cli("check", str(ROOT / "experiments" / "stl10_table1.yaml"), "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert {e["verdict"] for e in data["entries"]} == {"reference"}
    assert all(abs(e["delta"]) < 0.5 and e["test"]["ci"][0] < 0 for e in data["entries"][:1])
    verdicts = {r["relation"]: r["verdict"] for r in data["relations"]}
    assert verdicts["local/local < sync/sync - 2"] == "holds"
    assert verdicts["local/momentum ~= sync/sync"] == "holds"
    assert verdicts["local/sync - local/local > 0.5 * (sync/sync - local/local)"] == "holds"
    assert "contradicted" not in verdicts.values()
    assert all("block residual" in r["difference"]["noise"] for r in data["relations"][:4])
    assert {r["pairing"] for r in data["relations"]} == {"paired by seed (3 pairs)"}


def test_table1_check_fails_naming_the_claims_that_miss(mlflow_tmp):
    missed = {**PAPER_TABLE1, ("local", "local"): 88.5, ("local", "momentum"): 86.0}
    _table1_runs(mlflow_tmp, missed)
    code, out, _ = cli("check", str(ROOT / "experiments" / "stl10_table1.yaml"))
    assert code == 1
    failed = out.split("failed: ", 1)[1].split("\n")[0]
    assert "local/local < sync/sync - 2" in failed and "local/momentum ~= sync/sync" in failed
    assert "local/sync > sync/local" not in failed


def test_no_project_file_points_outside_the_repository_for_its_facts():
    offenders = []
    for path in ROOT.rglob("*"):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(ROOT).parts):
            continue
        if path.suffix not in {".py", ".md", ".yaml", ".toml", ".ini", ".txt", ".sh", ""}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "../shared" in text or "REFERENCE.md" in text or "DESIGN.md" in text:
            offenders.append(str(path.relative_to(ROOT)))
    offenders = [o for o in offenders if o != "tests/test_check.py"]
    assert offenders == []
