"""MLflow tracking: URI resolution, fail-fast checks, one run per cell, reruns, concurrency."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from suite.cell import CellConfig
from suite.tracking import (
    CELL_TAG,
    FAILURE_TAG,
    Tracker,
    TrackingError,
    check_tracking,
    latest_per_cell,
    read_runs,
    resolve_tracking_uri,
    to_table,
)
from suite.tracking.run import check_metric_name
from suite.tracking.store import is_locked_error, with_retry

EXPERIMENT = "unit"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database, built once (migrations take seconds)."""
    from suite.tracking.store import open_client

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    open_client(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(mlflow_tmp: str, template_db: Path) -> str:
    """The conftest's temporary store, pre-filled with the migrated template database."""
    shutil.copy(template_db, mlflow_tmp.removeprefix("sqlite:///"))
    return mlflow_tmp


def cell(seed: int = 0) -> CellConfig:
    return CellConfig(experiment=EXPERIMENT, seed=seed)


def runs_of(uri: str, cell_id: str) -> list[dict]:
    return [r for r in read_runs(uri, EXPERIMENT, status=None) if r["cell_id"] == cell_id]


# -- resolving and checking the URI -------------------------------------------------------------
def test_resolve_order_flag_over_env_over_default(tmp_path, monkeypatch):
    """flag > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db; relative sqlite paths → absolute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri() == "http://tracking:5000"
    assert resolve_tracking_uri("sqlite:////data/runs.db") == "sqlite:////data/runs.db"
    assert resolve_tracking_uri("sqlite:///sub/runs.db") == f"sqlite:///{tmp_path / 'sub/runs.db'}"


def test_check_tracking_unreachable_server_names_uri_and_fix():
    """A closed port on 127.0.0.1 → TrackingError naming the URI and `mlflow server`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingError, match="mlflow server --backend-store-uri") as err:
        check_tracking(uri, timeout_s=2.0)
    assert uri in str(err.value)


@pytest.mark.parametrize(("status", "ok"), [(200, True), (401, True), (404, False), (502, False)])
def test_check_tracking_server_health_status(status, ok):
    """GET /health answered 200 (or 401 behind auth) passes; 404 or 502 is a TrackingError."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(status if self.path == "/health" else 400)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        if ok:
            check_tracking(uri)
        else:
            with pytest.raises(TrackingError, match=f"HTTP {status}"):
                check_tracking(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_check_tracking_sqlite_folder(tmp_path):
    """A writable (even missing) folder passes without being created; a folder that is a file
    raises; so does file:."""
    check_tracking(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'mlflow.db'}")
    assert sorted(tmp_path.iterdir()) == []  # nothing created, no probe file left
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="not writable"):
        check_tracking(f"sqlite:///{blocker / 'mlflow.db'}")
    with pytest.raises(TrackingError, match="file store"):
        check_tracking(f"file://{tmp_path / 'mlruns'}")


def test_sqlite_uri_naming_a_folder_fails_at_once(tmp_path):
    """A sqlite URI whose path is a folder: check_tracking (to write and to read), read_runs,
    metric_history and open_client raise TrackingError saying so, each in well under a second
    (MLflow alone retries the connection for about 100 s)."""
    from suite.tracking import metric_history
    from suite.tracking.store import open_client

    uri = f"sqlite:///{tmp_path}"
    calls = [
        lambda: check_tracking(uri),
        lambda: check_tracking(uri, write=False),
        lambda: read_runs(uri, EXPERIMENT),
        lambda: metric_history(uri, "run", "loss"),
        lambda: open_client(uri),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(TrackingError, match="is a folder, not a SQLite database file"):
            call()
        assert time.monotonic() - start < 1.0


def test_reading_a_missing_store_creates_nothing(tmp_path):
    """read_runs and metric_history on a SQLite store that does not exist (in a folder that does
    not exist either) return [] and create neither the folder nor the file."""
    from suite.tracking import metric_history

    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    assert read_runs(uri, EXPERIMENT, status=None) == []
    assert metric_history(uri, "0123", "train/loss") == []
    assert list(tmp_path.iterdir()) == []


def test_reader_opens_the_store_read_only_and_writes_nothing(store, tmp_path):
    """read_runs and metric_history read a store whose file is mode 444 in a folder of mode 555,
    and leave its bytes unchanged; the reader's connection is SQLite read-only (a write through
    it fails), which is what makes a really read-only store readable. (Run as root, the chmod
    alone restricts nothing; the read-only connection is then what this test shows.)"""
    from suite.tracking import metric_history
    from suite.tracking.store import open_reader

    with Tracker(store, EXPERIMENT).start_cell(cell(seed=7)) as run:
        run.log_metrics({"train/loss": 0.5}, step=3)
    db = Path(store.removeprefix("sqlite:///"))
    before = db.read_bytes()
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        (row,) = read_runs(store, EXPERIMENT)
        assert row["cell_id"] == cell(seed=7).cell_id
        assert metric_history(store, row["run_id"], "train/loss") == [(3, 0.5)]
        reader = open_reader(store)
        with pytest.raises(Exception, match="readonly database"):
            reader.create_experiment("not-allowed")
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith("mlflow.db")) == [
        "mlflow.db"
    ]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_check_tracking_read_only_folder_raises(tmp_path):
    """A folder without write permission raises TrackingError naming the URI."""
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="not writable") as err:
        check_tracking(uri)
    assert uri in str(err.value)


# -- where artifacts go, and what reaches the terminal -------------------------------------------
def test_default_artifact_root_rule(tmp_path, monkeypatch):
    """$BNSUITE_ARTIFACT_ROOT first; else beside a SQLite store; a server keeps its own (None);
    another database: <workdir>/mlruns."""
    from suite.tracking.tracker import default_artifact_root

    monkeypatch.delenv("BNSUITE_ARTIFACT_ROOT", raising=False)
    db = tmp_path / "store" / "mlflow.db"
    assert default_artifact_root(f"sqlite:///{db}") == str(tmp_path / "store" / "mlruns")
    assert default_artifact_root("http://tracking:5000", tmp_path) is None
    pg = "postgresql://u@host/db"
    assert default_artifact_root(pg, tmp_path / "runs") == str(tmp_path / "runs" / "mlruns")
    monkeypatch.setenv("BNSUITE_ARTIFACT_ROOT", str(tmp_path / "env"))
    assert default_artifact_root(f"sqlite:///{db}") == str(tmp_path / "env")


def test_artifacts_go_beside_the_sqlite_store_not_into_the_working_directory(
    tmp_path, template_db, monkeypatch
):
    """Without $BNSUITE_ARTIFACT_ROOT, a cell run's artifacts (config.json) land in
    <store folder>/mlruns/<experiment>/, and the working directory stays empty."""
    monkeypatch.delenv("BNSUITE_ARTIFACT_ROOT", raising=False)
    store_dir, cwd = tmp_path / "store", tmp_path / "cwd"
    store_dir.mkdir()
    cwd.mkdir()
    shutil.copy(template_db, store_dir / "mlflow.db")
    monkeypatch.chdir(cwd)
    with Tracker(f"sqlite:///{store_dir / 'mlflow.db'}", "beside").start_cell(cell()) as run:
        uri = run.artifact_uri
    assert uri.startswith((store_dir / "mlruns" / "beside").as_uri())
    assert list((store_dir / "mlruns" / "beside").rglob("config.json"))
    assert list(cwd.iterdir()) == []


def test_opening_a_new_store_keeps_mlflow_info_lines_off_the_terminal(tmp_path):
    """Creating a fresh SQLite store (MLflow's migrations) prints nothing on stdout or stderr:
    no "Creating initial MLflow database tables" line."""
    code = (
        "from suite.tracking.store import open_client; "
        f"open_client('sqlite:///{tmp_path / 'new.db'}')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new.db").exists()
    assert "Creating initial MLflow database tables" not in result.stderr
    assert result.stdout == "" and "INFO" not in result.stderr


# -- pure helpers ---------------------------------------------------------------------------------
def test_metric_names_follow_mlflow_rule():
    """'knn/top1' is kept as given; '../x', '/x', 'a//b' and 'a?b' are refused."""
    assert check_metric_name("knn/top1") == "knn/top1"
    for bad in ("../x", "/x", "a//b", "a?b", ""):
        with pytest.raises(ValueError, match="metric name"):
            check_metric_name(bad)


def test_with_retry_repeats_only_locked_errors():
    """'database is locked' (also as a cause) is retried until success; other errors are not."""
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            try:
                raise OSError("(sqlite3.OperationalError) database is locked")
            except OSError as inner:
                raise RuntimeError("write failed") from inner
        return "ok"

    assert with_retry(flaky) == "ok" and len(calls) == 3
    assert not is_locked_error(ValueError("no such table"))
    with pytest.raises(ValueError):
        with_retry(lambda: (_ for _ in ()).throw(ValueError("no such table")))


def test_to_table_and_latest_per_cell():
    """to_table looks inside params/metrics/tags by the first dot; latest run per cell wins."""
    rows = [
        {
            "cell_id": "a",
            "start_time": 1,
            "params": {"dataset.name": "x"},
            "metrics": {"knn/top1": 1},
        },
        {"cell_id": "a", "start_time": 2, "params": {"dataset.name": "y"}, "metrics": {}},
        {"cell_id": "b", "start_time": 0, "params": {}, "metrics": {}},
    ]
    table = to_table(rows, ["cell_id", "params.dataset.name", "metrics.knn/top1", "tags.none"])
    assert table[0] == ["a", "x", 1, None]
    assert [(r["cell_id"], r["start_time"]) for r in latest_per_cell(rows)] == [("a", 2), ("b", 0)]


# -- runs ----------------------------------------------------------------------------------------
def test_full_run_is_read_back_with_params_tags_metrics(store, tmp_path):
    """start → metrics at steps → log_dict → finish: read_runs returns params == cell.flat()
    (as strings) plus eval.bn_statistics = device0 (what evaluation normalises with), the
    cell-id tag, last metric values; finished_cell_ids has the id."""
    tracker = Tracker(store, EXPERIMENT)
    c = cell(seed=1)
    run = tracker.start_cell(c, extra_tags={"suite.device": "test-device"})
    for step in range(3):
        run.log_metrics({"train/loss": 1.0 / (step + 1), "skipped": None}, step=step)
    run.log_metrics({"knn/top1": 0.5, "linear/top1": float("nan")}, step=3)
    run.log_dict({"knn/top1": 0.5}, "summary.json")
    run.finish()

    assert tracker.finished_cell_ids() == {c.cell_id}
    (row,) = read_runs(store, EXPERIMENT)
    assert row["run_id"] == run.run_id and row["status"] == "FINISHED"
    assert row["cell_id"] == c.cell_id == row["tags"][CELL_TAG]
    flat = {k: str(v) for k, v in c.flat().items()}
    assert row["params"] == {**flat, "eval.bn_statistics": "device0"}
    assert row["params"]["bn_history"] == "per_device"
    assert row["tags"]["suite.device"] == "test-device"
    assert row["tags"]["suite.git_commit"]
    assert row["run_name"] == "byol s=local t=local b=64 d=1 seed=1"
    assert row["metrics"]["train/loss"] == pytest.approx(1 / 3)
    assert row["metrics"]["knn/top1"] == 0.5 and math.isnan(row["metrics"]["linear/top1"])
    assert "skipped" not in row["metrics"]
    assert row["end_time"] >= row["start_time"]
    artifacts = Path(os.environ["BNSUITE_ARTIFACT_ROOT"]) / EXPERIMENT / run.run_id / "artifacts"
    assert json.loads((artifacts / "config.json").read_text()) == c.to_dict()
    assert json.loads((artifacts / "summary.json").read_text()) == {"knn/top1": 0.5}
    assert (artifacts / "config.yaml").exists()


def test_exception_in_context_records_failed_with_reason(store):
    """An exception inside `with start_cell(...)` → FAILED, suite.failure = the exception text,
    re-raised; the cell is not finished but read_runs(status=None) shows the run."""
    tracker = Tracker(store, EXPERIMENT)
    c = cell(seed=2)
    with pytest.raises(RuntimeError, match="loss is nan"), tracker.start_cell(c) as run:
        run.log_metrics({"train/loss": 1.0}, step=0)
        raise RuntimeError("loss is nan")
    assert c.cell_id not in tracker.finished_cell_ids()
    assert read_runs(store, EXPERIMENT) == []
    (row,) = read_runs(store, EXPERIMENT, status=None)
    assert row["status"] == "FAILED"
    assert row["tags"][FAILURE_TAG] == "RuntimeError: loss is nan"
    assert row["metrics"] == {"train/loss": 1.0}


def test_stale_running_run_is_killed_when_cell_restarts(store):
    """A run left RUNNING (process killed) is ended KILLED when the cell starts again; after the
    rerun finishes the cell has exactly one FINISHED run."""
    tracker = Tracker(store, EXPERIMENT)
    c = cell(seed=3)
    stale = tracker.start_cell(c)  # never finished: as after SIGKILL
    assert c.cell_id not in tracker.finished_cell_ids()
    with Tracker(store, EXPERIMENT).start_cell(c) as rerun:
        rerun.log_metrics({"knn/top1": 0.4})
    by_id = {r["run_id"]: r for r in runs_of(store, c.cell_id)}
    assert {k: r["status"] for k, r in by_id.items()} == {
        stale.run_id: "KILLED",
        rerun.run_id: "FINISHED",
    }
    assert by_id[stale.run_id]["tags"]["suite.superseded_by"] == rerun.run_id
    assert by_id[stale.run_id]["tags"][FAILURE_TAG].startswith("stale")


def test_experiment_creation_race_and_deleted_experiment(store, monkeypatch):
    """A creator that saw no experiment but lost the race to create it ends up with the winner's
    id; a deleted experiment is a TrackingError telling how to restore it."""
    from mlflow import MlflowClient

    winner = Tracker(store, EXPERIMENT)
    real_get = MlflowClient.get_experiment_by_name
    calls = []

    def get_missing_once(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real_get(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", get_missing_once)
    assert Tracker(store, EXPERIMENT).experiment_id == winner.experiment_id
    assert len(calls) == 2
    monkeypatch.undo()
    MlflowClient(store).delete_experiment(winner.experiment_id)
    with pytest.raises(TrackingError, match="deleted; restore it"):
        Tracker(store, EXPERIMENT)


def test_bad_status_and_missing_experiment(store):
    """finish() names the valid statuses; read_runs of an unknown experiment is empty."""
    run = Tracker(store, EXPERIMENT).start_cell(cell(seed=4))
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        run.finish("DONE")
    run.finish("KILLED")
    run.finish()  # no-op after the first end
    assert runs_of(store, cell(seed=4).cell_id)[0]["status"] == "KILLED"
    assert read_runs(store, "no-such-experiment") == []


# -- concurrency -----------------------------------------------------------------------------------
N_WORKERS, N_RUNS = 2, 4


def _worker(uri: str, root: str, worker: int, barrier) -> None:
    """Create the shared experiment and log N_RUNS cells, all workers starting together."""
    import mlflow  # noqa: F401  (import before the barrier, as a training process would have)
    import torch  # noqa: F401

    barrier.wait(timeout=120)
    tracker = Tracker(uri, "concurrent", root, flush_every_s=0)
    for i in range(N_RUNS):
        c = CellConfig(experiment="concurrent", seed=100 * worker + i)
        with tracker.start_cell(c) as run:
            for step in range(3):
                run.log_metrics({"train/loss": 1.0 / (step + 1), "worker": worker}, step=step)
    import gc

    gc.freeze()  # interpreter shutdown with torch + SQLAlchemy loaded otherwise takes seconds


@pytest.mark.slow
def test_concurrent_processes_share_one_fresh_sqlite_store(mlflow_tmp, tmp_path):
    """2 spawned processes open one new SQLite file (schema migration), create the same
    experiment and log 4 runs each at once: all 8 cells are present, FINISHED, each exactly once,
    with their metrics."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_WORKERS)
    root = str(tmp_path / "artifacts")
    procs = [
        ctx.Process(target=_worker, args=(mlflow_tmp, root, w, barrier)) for w in range(N_WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * N_WORKERS

    rows = read_runs(mlflow_tmp, "concurrent", status=None)
    expected = {
        CellConfig(experiment="concurrent", seed=100 * w + i).cell_id
        for w in range(N_WORKERS)
        for i in range(N_RUNS)
    }
    assert sorted(r["cell_id"] for r in rows) == sorted(expected)
    assert {r["status"] for r in rows} == {"FINISHED"}
    assert all(r["metrics"]["train/loss"] == pytest.approx(1 / 3) for r in rows)


def test_a_loaded_cells_views_are_recorded_as_params(store, tmp_path):
    """Every resolved view value is an MLflow param (aug.view1.flip_p, aug.view2.scale, …)."""
    from suite.config import load_experiment

    path = tmp_path / "x.yaml"
    path.write_text(
        f"name: {EXPERIMENT}\ndataset: {{name: digits}}\noptimizer: {{warmup_epochs: 0}}\n"
        "aug: {scale: [0.4, 1.0], view2: {solarize_p: 0.1}}\n"
    )
    (c,) = load_experiment(path, env={}).cells()
    Tracker(store, EXPERIMENT).start_cell(c).finish()
    (row,) = read_runs(store, EXPERIMENT)
    params = row["params"]
    assert params["aug.view1.scale"] == params["aug.view2.scale"] == "(0.4, 1.0)"
    assert params["aug.view1.flip_p"] == "0.0"  # digits' default
    assert params["aug.view2.solarize_p"] == "0.1" and params["aug.view1.solarize_p"] == "0.0"


def test_the_linear_probe_protocol_of_each_run_is_a_param(store, tmp_path):
    """Two cells of one file that differ only in eval.linear.protocol are two runs whose params
    say which protocol their linear numbers come from (cached / augmented)."""
    from suite.config import load_experiment

    path = tmp_path / "x.yaml"
    path.write_text(
        f"name: {EXPERIMENT}\ndataset: {{name: digits}}\noptimizer: {{warmup_epochs: 0}}\n"
        "matrix: {eval: [{linear: {protocol: cached}}, {linear: {protocol: augmented}}]}\n"
    )
    tracker = Tracker(store, EXPERIMENT)
    for c in load_experiment(path, env={}).cells():
        tracker.start_cell(c).finish()
    rows = read_runs(store, EXPERIMENT)
    assert sorted(r["params"]["eval.linear.protocol"] for r in rows) == ["augmented", "cached"]
    assert len({r["cell_id"] for r in rows}) == 2


def test_an_unreachable_store_is_retried_for_the_budget_in_seconds_then_a_store_fault():
    """Inside retry_budget(1.0): a call failing with MLflow's 'Max retries exceeded … Connection
    refused' is repeated for about 1 s, then raised as StoreFault(kind 'unreachable') whose
    'since' is the first failure; MLflow's own HTTP retries are off inside the block and the
    environment is as before after it (a value the user set is kept)."""
    from mlflow.exceptions import MlflowException

    from suite.tracking.faults import UNREACHABLE, StoreFault, retry_budget

    calls: list[float] = []

    def refused():
        calls.append(time.time())
        raise MlflowException(
            "API request to http://127.0.0.1:1/api failed with exception HTTPConnectionPool("
            "host='127.0.0.1', port=1): Max retries exceeded (Connection refused)"
        )

    before = dict(os.environ)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "77"
    try:
        with retry_budget(1.0):
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
            t0 = time.monotonic()
            with pytest.raises(StoreFault) as err:
                with_retry(refused)
            elapsed = time.monotonic() - t0
        assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == before.get(
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
        )
    finally:
        os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT")
        if "MLFLOW_HTTP_REQUEST_TIMEOUT" in before:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = before["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert err.value.kind == UNREACHABLE and len(calls) >= 2
    assert 0.9 <= elapsed < 3.0
    assert err.value.since == pytest.approx(calls[0], abs=0.05)
    assert "Connection refused" in str(err.value)


def test_outside_a_retry_budget_an_unreachable_store_fails_at_once():
    """Outside retry_budget (plan, check, report) with_retry does not repeat an unreachable call
    (MLflow's own retries apply); it is still raised as a StoreFault, a TrackingError."""
    from suite.tracking import TrackingError

    calls = []

    def refused():
        calls.append(1)
        raise ConnectionError("Failed to establish a new connection: Connection refused")

    with pytest.raises(TrackingError, match="unreachable since"):
        with_retry(refused)
    assert calls == [1]
