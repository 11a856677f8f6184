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
    ("text", "means", "lhs", "rhs", "holds"),
    [
        ("local/local < sync/sync", {"local/local": 84.0, "sync/sync": 88.0}, 84.0, 88.0, True),
        (
            "local/momentum >= sync/sync - 0.5",
            {"local/momentum": 87.6, "sync/sync": 88.0},
            87.6,
            87.5,
            True,
        ),
        (
            "local/momentum >= sync/sync - 0.5",
            {"local/momentum": 87.4, "sync/sync": 88.0},
            87.4,
            87.5,
            False,
        ),
        (
            "local/momentum >= 0.97 * local/local",
            {"local/momentum": 96.0, "local/local": 100.0},
            96.0,
            97.0,
            False,
        ),
        ("a - b * 2 > -(c + 1)", {"a": 5.0, "b": 1.0, "c": 1.0}, 3.0, -2.0, True),
        ("(a) / (b) == 2", {"a": 4.0, "b": 2.0}, 2.0, 2.0, True),
        ("a/b <= 1.5e0", {"a": 3.0, "b": 2.0}, 1.5, 1.5, True),
    ],
)
def test_relation_evaluates_groups_numbers_and_precedence(text, means, lhs, rhs, holds):
    rel = parse_relation(text)
    left, right, ok = rel.evaluate(means)
    assert math.isclose(left, lhs) and math.isclose(right, rhs) and ok is holds
    assert {g.name for g in rel.groups()} == set(means)


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
                "tolerance": 1.0,
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
    assert entry["verdict"] == "pass" and code == 0


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


@pytest.mark.parametrize(
    ("bounds", "verdict"),
    [
        ({"expected": 0.88, "tolerance": 0.005}, "pass"),
        ({"expected": 0.89, "tolerance": 0.005}, "FAIL"),
        ({"expected": 0.87, "tolerance": 0.005}, "FAIL"),  # better than expected: both sides
        ({"expected": 0.87, "tolerance": 0.005, "side": "lower"}, "pass"),
        ({"expected": 0.89, "tolerance": 0.005, "side": "upper"}, "pass"),
        ({"expected": 0.89, "tolerance": 0.005, "side": "lower"}, "FAIL"),
        ({"min": 0.879}, "pass"),
        ({"min": 0.881}, "FAIL"),
        ({"max": 0.881}, "pass"),
        ({"min": 0.5, "max": 0.879}, "FAIL"),
        ({"expected": None}, "info"),
    ],
)
def test_each_verdict_form(tmp_path, judged, bounds, verdict):
    path, _, _ = judged
    entry = {"match": {"student_bn": "sync"}, "metric": "linear/top1", **bounds}
    code, data = check(path, baseline(tmp_path, entries=[entry]))
    assert data["entries"][0]["verdict"] == verdict
    assert code == (1 if verdict == "FAIL" else 0)


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


def test_relations_pass_fail_and_say_when_the_margin_is_inside_the_seed_spread(tmp_path, judged):
    path, _, _ = judged
    base = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        relations=[
            "local/local < sync/sync",
            "local/momentum >= sync/sync - 0.5",
            "local/local > sync/sync",
            {
                "relation": "local/momentum >= 0.97 * local/local",
                "metric": "images_per_s",
                "unit": "value",
            },
            {
                "relation": "m2t > byol",
                "match": {"teacher_bn": "momentum"},
                "groups": {"m2t": {"method": "m2t"}, "byol": {"method": "byol"}},
            },
        ],
    )
    code, data = check(path, base)
    verdicts = [r["verdict"] for r in data["relations"]]
    assert verdicts == ["pass", "pass", "FAIL", "pass", "pass"] and code == 1
    first = data["relations"][0]
    assert first["lhs"] == pytest.approx(100 * statistics.fmean(TRUTH["byol:local/local"]))
    assert first["within_seed_spread"] is False  # 4 points apart, spread ~0.5
    # byol local/momentum (88.13) vs sync/sync (88.00): 0.13 apart, spread ~0.3: not resolved
    close = parse_relation("local/momentum > sync/sync")
    base2 = baseline(
        tmp_path,
        metric="linear/top1",
        unit="percent",
        relations=[{"relation": close.text, "match": {"method": "byol"}}],
    )
    _, data2 = check(path, base2)
    assert data2["relations"][0]["verdict"] == "pass"
    assert data2["relations"][0]["within_seed_spread"] is True
    code, out, _ = cli("check", str(path), "--baseline", str(base2))
    assert "(within seed spread)" in out


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
    assert "1 pass, 1 FAIL, 0 missing" in out
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
    assert "tolerance = max(floor, 3 x std over seeds)" in text
    written = yaml.safe_load(text)["experiments"]["judged"]["entries"]
    assert len(written) == 4 * 2
    # the fewest keys that tell the configurations apart, method first
    local = next(
        e
        for e in written
        if e["match"] == {"method": "byol", "student_bn": "local", "teacher_bn": "local"}
        and e["metric"] == "linear/top1"
    )
    values = TRUTH["byol:local/local"]
    assert local["expected"] == pytest.approx(statistics.fmean(values), rel=1e-5)
    assert local["tolerance"] == pytest.approx(max(0.01, 3 * statistics.stdev(values)), rel=1e-5)
    assert local["side"] == "lower" and local["measured"]["n"] == 3
    assert local["measured"]["seeds"] == [0, 1, 2]
    speed = next(e for e in written if e["metric"] == "images_per_s")
    assert speed["tolerance"] == pytest.approx(max(0.1 * 101.0, 3 * 1.0), rel=1e-5)
    assert json.loads(stdout)["exit_code"] == 0
    # a later run of one cell regresses by 5 points: the entry of that configuration fails
    cell = next(c for c in exp.cells() if label(c) == "byol:local/local" and c.seed == 0)
    record(uri, exp.name, cell, {"linear/top1": 0.79, "images_per_s": 100.0})
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
    judged_entries = [e for e in data["entries"] if e["expected"] is not None]
    assert all(e["unit"] == "fraction" and abs(e["delta"]) < 1e-5 for e in judged_entries)
    assert all(e["expected"] - e["tolerance"] > 0.5 for e in judged_entries)  # a fraction bound


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
    assert data["counts"]["missing"] == len(
        [e for e in data["entries"] if e["expected"] is not None or e["min"] is not None]
    ) + len(data["relations"])
    assert all(e["cells"] for e in data["entries"])


def _table1_runs(uri: str, rows: dict[tuple[str, str], float]) -> None:
    exp = load_experiment(ROOT / "experiments" / "stl10_table1.yaml", env={"DATA": "/nowhere"})
    for cell in exp.cells():
        top1 = rows[(cell.student_bn, cell.teacher_bn)] + 0.1 * (cell.seed - 1)
        record(uri, exp.name, cell, {"linear/top1": top1 / 100, "images_per_s": 1000.0})


def test_table1_check_passes_on_runs_that_reproduce_the_paper(mlflow_tmp):
    _table1_runs(mlflow_tmp, PAPER_TABLE1)
    code, out, err = cli("check", str(ROOT / "experiments" / "stl10_table1.yaml"))
    assert code == 0, out + err
    assert "10 pass, 0 FAIL, 0 missing" in out


def test_table1_check_fails_naming_the_rows_that_miss(mlflow_tmp):
    missed = {**PAPER_TABLE1, ("local", "local"): 88.5, ("local", "momentum"): 86.0}
    _table1_runs(mlflow_tmp, missed)
    code, out, _ = cli("check", str(ROOT / "experiments" / "stl10_table1.yaml"))
    assert code == 1
    failed = out.split("failed: ", 1)[1]
    assert "per-GPU BN / per-GPU BN" in failed and "per-GPU BN / MomentumBN" in failed
    assert "local/local < sync/sync" in failed and "local/momentum >= sync/sync - 0.5" in failed
    assert "BYOL SyncBN / SyncBN" not in failed


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
