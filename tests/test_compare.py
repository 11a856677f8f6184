"""``bnsuite compare``: two sets of runs of one experiment, configuration by configuration.

Runs are fabricated in real MLflow stores (one run per cell, tagged with its id and a git commit,
with the metrics a cell logs): an experiment of 2 configurations × 5 seeds; in side B one
configuration is clearly worse (accuracy −3 points) and the other the same.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import cli, write_experiment
from scipy import stats as sps

from suite.check.compare import (
    BETTER,
    PAIRED,
    SAME,
    TOO_FEW,
    WELCH,
    WORSE,
    Sample,
    compare_samples,
)
from suite.config import load_experiment
from suite.tracking import CELL_TAG
from suite.tracking.store import open_client
from suite.tracking.tracker import EXPERIMENT_TAG

BASE = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "batch_size": 32,
    "devices": 4,
    "optimizer": {"warmup_epochs": 0},
    "matrix": {"bn": [["sync", "sync"], ["local", "local"]]},
    "seeds": [0, 1, 2, 3, 4],
}
# linear/top1 per configuration and seed; side B: sync/sync 3 points worse, local/local the same
TOP1_A = {
    "sync/sync": [0.880, 0.884, 0.878, 0.882, 0.886],
    "local/local": [0.840, 0.845, 0.835, 0.842, 0.838],
}
SHIFT_B = {
    "sync/sync": [-0.029, -0.032, -0.030, -0.028, -0.031],
    "local/local": [0.002, -0.003, 0.001, -0.001, 0.000],
}
COMMIT_A, COMMIT_B, COMMIT_LATER = "aaaa1111" * 5, "bbbb2222" * 5, "abcd3333" * 5
ACCURACY_ROWS = ("linear/top1", "knn/top1", "knn/top1_gain")


def bn(cell) -> str:
    return f"{cell.student_bn}/{cell.teacher_bn}"


def top1(cell, side: str) -> float:
    value = TOP1_A[bn(cell)][cell.seed]
    return value + (SHIFT_B[bn(cell)][cell.seed] if side == "b" else 0.0)


def metrics(cell, side: str) -> dict[str, float]:
    """What a cell logs: linear and kNN top-1, the kNN floor, the final loss and images/s."""
    t = top1(cell, side)
    return {
        "linear/top1": t,
        "knn/top1": t - 0.02,
        "knn/top1_random_init": 0.30,
        "train/loss_final": 1.0 + 0.01 * cell.seed,
        "images_per_s": 100.0 + cell.seed,
    }


_clock = itertools.count(1_700_000_000_000, 1000)  # run start times (ms), strictly increasing


def record(client, exp_id: str, cell, values: dict, commit: str, status: str = "FINISHED"):
    """A run of ``cell`` as the runner records it (tags, metrics, end status)."""
    from mlflow.entities import Metric

    tags = {CELL_TAG: cell.cell_id, EXPERIMENT_TAG: "cmp", "mlflow.source.git.commit": commit}
    run = client.create_run(exp_id, start_time=next(_clock), tags=tags)
    batch = [Metric(key, value, 0, 0) for key, value in values.items()]
    client.log_batch(run.info.run_id, metrics=batch)
    client.set_terminated(run.info.run_id, status)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The experiment file and four stores: ``a``; ``b`` (sync/sync worse); ``b_gap`` (as b,
    but seed 4 FAILED on both configurations); ``commits`` (a's values at COMMIT_A, b's at
    COMMIT_B, then a's again at COMMIT_LATER). One store is made, the others are copies of it
    at some stage (creating a store's schema takes seconds)."""
    folder = tmp_path_factory.mktemp("compare")
    path = write_experiment(folder, "cmp", BASE)
    exp = load_experiment(path)
    files = {k: folder / f"{k}.db" for k in ("a", "b", "b_gap", "commits")}
    uris = {k: f"sqlite:///{f}" for k, f in files.items()}

    def fill(key: str, side: str, commit: str, seeds=range(5), status: str = "FINISHED") -> None:
        client = open_client(uris[key])
        exp_id = client.get_experiment_by_name(exp.name).experiment_id
        for cell in exp.cells():
            if cell.seed in seeds:
                record(client, exp_id, cell, metrics(cell, side), commit, status)

    open_client(uris["a"]).create_experiment(exp.name)
    shutil.copy(files["a"], files["b_gap"])  # the schema and the experiment, no runs yet
    fill("a", "a", COMMIT_A)
    fill("b_gap", "b", COMMIT_B, seeds=range(4))
    fill("b_gap", "b", COMMIT_B, seeds=[4], status="FAILED")
    shutil.copy(files["b_gap"], files["b"])
    fill("b", "b", COMMIT_B, seeds=[4])
    shutil.copy(files["a"], files["commits"])
    fill("commits", "b", COMMIT_B)
    fill("commits", "a", COMMIT_LATER)
    return path, exp, uris, folder


def compare(path, *extra: str) -> tuple[int, dict]:
    code, out, err = cli("compare", str(path), "--json", *extra)
    assert code != 2, err
    return code, json.loads(out)


def rows_by(result: dict) -> dict[tuple[str, str], dict]:
    return {(r["configuration"], r["metric"]): r for r in result["rows"]}


def config_of(result: dict, text: str) -> str:
    (name,) = {r["configuration"] for r in result["rows"] if text in r["configuration"]}
    return name


def digest(uri: str) -> str:
    return hashlib.sha256(Path(uri.removeprefix("sqlite:///")).read_bytes()).hexdigest()


# -- verdicts and exit codes -----------------------------------------------------------------
def test_a_clearly_worse_configuration_is_worse_and_exits_1(stores):
    path, _, uris, _ = stores
    before = (digest(uris["a"]), digest(uris["b"]))
    code, result = compare(path, "--a", uris["a"], "--b", uris["b"])
    assert code == 1
    rows = rows_by(result)
    sync, local = config_of(result, "sync"), config_of(result, "local")
    for metric in ACCURACY_ROWS:
        assert rows[sync, metric]["verdict"] == WORSE
        assert rows[sync, metric]["beyond_factor"]
        assert rows[local, metric]["verdict"] == SAME
    for metric in ("train/loss_final", "images_per_s"):  # identical on both sides
        assert rows[sync, metric]["verdict"] == rows[local, metric]["verdict"] == SAME
    assert result["counts"] == {BETTER: 0, SAME: 7, WORSE: 3, TOO_FEW: 0}
    assert result["summary"] == "0 better, 7 same, 3 worse (3 beyond factor 1)"
    assert (digest(uris["a"]), digest(uris["b"])) == before  # reading wrote nothing


def test_swapped_sides_make_the_worse_configuration_better_and_exit_0(stores):
    path, _, uris, _ = stores
    code, result = compare(path, "--a", uris["b"], "--b", uris["a"])
    assert code == 0
    assert result["counts"][BETTER] == 3 and result["counts"][WORSE] == 0


def test_identical_stores_give_all_same_and_exit_0(stores, tmp_path):
    path, _, uris, _ = stores
    copy = tmp_path / "copy.db"
    shutil.copy(uris["a"].removeprefix("sqlite:///"), copy)
    code, result = compare(path, "--a", uris["a"], "--b", f"sqlite:///{copy}")
    assert code == 0
    assert {r["verdict"] for r in result["rows"]} == {SAME}
    assert all(r["diff"] == 0 and r["p_t"] == 1 for r in result["rows"])


def test_text_output_has_the_table_and_the_summary(stores):
    path, _, uris, _ = stores
    code, out, err = cli("compare", str(path), "--a", uris["a"], "--b", uris["b"])
    assert code == 1, err
    header = next(line for line in out.splitlines() if line.startswith("configuration"))
    for column in ("n A", "mean A ± sd", "diff B-A [95% CI]", "pairing", "p (t)", "p (MWU)"):
        assert column in header
    assert "0 better, 7 same, 3 worse (3 beyond factor 1)" in out
    assert "worse *" in out


def test_a_large_factor_exits_0_while_the_row_stays_worse(stores):
    path, _, uris, _ = stores
    code, result = compare(path, "--a", uris["a"], "--b", uris["b"], "--factor", "1.1")
    assert code == 0
    assert result["counts"][WORSE] == 3 and result["beyond_factor"] == 0
    # linear/top1 fell from 0.882 to 0.852 (x 0.966): beyond 1.03, within 1.04
    code, result = compare(
        path, "--a", uris["a"], "--b", uris["b"], "--factor", "1.03", "--metric", "linear/top1"
    )
    assert code == 1 and result["beyond_factor"] == 1
    code, result = compare(
        path, "--a", uris["a"], "--b", uris["b"], "--factor", "1.04", "--metric", "linear/top1"
    )
    assert code == 0 and result["rows"][0]["verdict"] == WORSE


# -- pairing and the statistics --------------------------------------------------------------
def test_same_seeds_are_paired_and_equal_scipy_ttest_rel(stores):
    path, _, uris, _ = stores
    _, result = compare(path, "--a", uris["a"], "--b", uris["b"])
    assert {r["pairing"] for r in result["rows"]} == {PAIRED}
    for metric in ACCURACY_ROWS:
        for cfg in (config_of(result, "sync"), config_of(result, "local")):
            row = rows_by(result)[cfg, metric]
            a, b = row["a"]["values"], row["b"]["values"]
            ref = sps.ttest_rel(b, a)
            ci = ref.confidence_interval(0.95)
            assert row["p_t"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
            assert row["ci"] == pytest.approx([ci.low, ci.high], rel=1e-9)
            assert row["diff"] == pytest.approx(sum(b) / 5 - sum(a) / 5, rel=1e-12)
            assert row["p_mwu"] is None  # the rank test is shown for unpaired rows only


def test_different_seeds_use_welch_equal_to_scipy_and_show_mwu(stores):
    path, _, uris, _ = stores
    code, result = compare(path, "--a", uris["a"], "--b", uris["b_gap"])
    assert code == 1
    rows = rows_by(result)
    assert {r["pairing"] for r in result["rows"]} == {WELCH}
    row = rows[config_of(result, "sync"), "linear/top1"]
    assert (row["a"]["n"], row["b"]["n"], row["b"]["seeds"]) == (5, 4, [0, 1, 2, 3])
    a, b = row["a"]["values"], row["b"]["values"]
    ref = sps.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert row["p_t"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert row["ci"] == pytest.approx([ci.low, ci.high], rel=1e-9)
    assert row["df"] == pytest.approx(ref.df, rel=1e-9)
    mwu = sps.mannwhitneyu(b, a, alternative="two-sided").pvalue
    assert row["p_mwu"] == pytest.approx(mwu, rel=1e-12)  # 2 / C(9, 4) = 0.016 < 0.05
    assert row["verdict"] == WORSE


def test_mwu_is_left_out_where_its_sizes_cannot_reach_alpha():
    a = Sample((0, 1, 2), (0.80, 0.81, 0.82))
    b = Sample((3, 4, 5), (0.70, 0.71, 0.72))  # 2 / C(6, 3) = 0.1: never below 0.05
    row = compare_samples("cfg", "linear/top1", a, b, alpha=0.05, factor=1.0)
    assert row.pairing == WELCH and row.p_mwu is None and row.verdict == WORSE


def test_lower_is_better_metrics_turn_the_direction():
    a = Sample((0, 1, 2, 3), (1.00, 1.01, 1.02, 1.03))
    b = Sample((0, 1, 2, 3), (0.90, 0.92, 0.91, 0.93))
    assert compare_samples("cfg", "train/loss_final", a, b, 0.05, 1.0).verdict == BETTER
    row = compare_samples("cfg", "train/loss_final", b, a, 0.05, 1.0)
    assert row.verdict == WORSE and row.beyond_factor  # 1.015 > 0.915 * 1
    assert not compare_samples("cfg", "train/loss_final", b, a, 0.05, 1.2).beyond_factor


def test_fewer_than_two_values_on_a_side_is_n_too_small_and_never_worse():
    a = Sample((0, 1, 2), (0.90, 0.91, 0.92))
    b = Sample((0,), (0.10,))
    row = compare_samples("cfg", "linear/top1", a, b, 0.05, 1.0)
    assert row.verdict == TOO_FEW and not row.beyond_factor and row.p_t is None


def test_constant_samples_that_differ_are_significant_and_write_strict_json():
    a = Sample((0, 1, 2), (100.0, 100.0, 100.0))
    b = Sample((3, 4, 5), (90.0, 90.0, 90.0))  # sd 0 on both sides: se 0, Welch df inf
    row = compare_samples("cfg", "train/steps", a, b, 0.05, 1.0)
    assert row.verdict == WORSE and row.p_t == 0
    assert json.loads(json.dumps(row.to_json(), allow_nan=False))["df"] is None


def test_one_seed_per_side_says_n_too_small_and_exits_0(stores):
    path, _, uris, _ = stores
    code, result = compare(path, "--a", uris["a"], "--b", uris["b"], "--seeds", "0")
    assert code == 0
    assert {r["verdict"] for r in result["rows"]} == {TOO_FEW}
    assert result["summary"].endswith(", 10 n too small")


# -- sides by commit -------------------------------------------------------------------------
def test_commit_filter_picks_each_commits_runs_from_one_store(stores):
    path, _, uris, _ = stores
    one = uris["commits"]
    code, result = compare(path, "--tracking-uri", one, "--a-commit", "aaaa1", "--b-commit", "BBBB")
    assert code == 1
    assert result["a"]["run_commits"] == [COMMIT_A] and result["b"]["run_commits"] == [COMMIT_B]
    _, two_stores = compare(path, "--a", uris["a"], "--b", uris["b"])
    assert result["rows"] == two_stores["rows"]  # the same runs as in two separate stores
    # without a commit a side reads the latest run of each cell: COMMIT_LATER, a's values again
    code, latest = compare(path, "--a", uris["a"], "--b", one)
    assert code == 0 and latest["b"]["run_commits"] == [COMMIT_LATER]
    assert {r["verdict"] for r in latest["rows"]} == {SAME}


def test_an_ambiguous_or_unknown_commit_is_exit_2(stores):
    path, _, uris, _ = stores
    one = uris["commits"]
    code, _, err = cli("compare", str(path), "--tracking-uri", one, "--a-commit", "a")
    assert code == 2 and "ambiguous" in err  # aaaa… and abcd…
    code, _, err = cli("compare", str(path), "--tracking-uri", one, "--b-commit", "f00d")
    assert code == 2 and "no FINISHED run of commit f00d" in err


# -- usage errors: exit 2, nothing created ---------------------------------------------------
def test_a_missing_store_is_exit_2_and_not_created(stores, tmp_path):
    path, _, uris, _ = stores
    missing = tmp_path / "nowhere" / "mlflow.db"
    code, _, err = cli("compare", str(path), "--a", uris["a"], "--b", f"sqlite:///{missing}")
    assert code == 2 and "side B: no FINISHED run" in err
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--metric", "knn/top2"), "is not a metric"),
        (("--metric", "linear/top1_gain"), "carries linear/top1_gain"),  # valid, never logged
        (("--alpha", "1.5"), "alpha"),
        (("--factor", "0.5"), "factor"),
    ],
)
def test_a_bad_metric_or_level_is_exit_2(stores, extra, message):
    path, _, uris, _ = stores
    code, _, err = cli("compare", str(path), "--a", uris["a"], "--b", uris["b"], *extra)
    assert code == 2 and message in err


def test_the_same_runs_on_both_sides_is_exit_2(stores):
    path, _, uris, _ = stores
    code, _, err = cli("compare", str(path), "--a", uris["a"], "--b", uris["a"])
    assert code == 2 and "same runs" in err
