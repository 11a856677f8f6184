"""The runner under faults a lab meets every week: a tracking server killed mid-run, a store whose
disk fills, checkpoint writes killed half-way. Each ends in one message and an exit code, never a
hang or a traceback, and a rerun of the same command records what was trained without training it
again.

The cell's process is replaced by a short Python script that speaks the event protocol (the
recording path is what is tested, not training). The server is a real ``mlflow server`` on
127.0.0.1; the full disk is a real tmpfs (mounted as root, else skipped).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import cli, fill
from cli_helpers import write_experiment as _write_experiment

from suite.runner import cell_folder
from suite.runner import execute as execute_module
from suite.tracking import FAILURE_TAG, read_runs

CELL = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "cifar_stem": False,
    "method": {"name": "byol", "proj_hidden": 32, "proj_dim": 32, "pred_hidden": 32},
    "max_steps": 3,
    "batch_size": 32,
    "optimizer": {"warmup_epochs": 0},
}
SERVER_START_S = 180.0
RETRY_S = "2"  # the runner's retry budget in these tests (default 30 s)

#: a cell process that reports a device, the loss at steps 1 and 2, runs ``{hook}``, reports step
#: 3 and a result; every start appends a line to ``{starts}``
CHILD = """
import json, sys, time
def emit(event, **fields):
    print("@bnsuite " + json.dumps({{"event": event, **fields}}), flush=True)
open({starts!r}, "a").write("started\\n")
emit("device", name="fake device", pid=0)
for step in (1, 2):
    emit("metrics", step=step, values={{"train/loss": 1.0 / step}})
{hook}
emit("metrics", step=3, values={{"train/loss": 0.25}})
emit("result", metrics={{"train/steps": 3, "train/loss_final": 0.25, "knn/top1": 0.5}})
"""


def child(monkeypatch, folder: Path, hook: str = "pass") -> Path:
    """Make every cell process :data:`CHILD` with ``hook``; the file that counts its starts."""
    starts = folder / "starts.txt"
    script = CHILD.format(starts=str(starts), hook=hook)
    monkeypatch.setattr(
        execute_module, "child_command", lambda *a, **k: [sys.executable, "-c", script]
    )
    return starts


def started(starts: Path) -> int:
    return len(starts.read_text().splitlines()) if starts.exists() else 0


def by_cell(uri: str, experiment: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in read_runs(uri, experiment, status=None):
        rows.setdefault(row["cell_id"], []).append(row)
    return rows


def statuses(rows: list[dict]) -> list[str]:
    return sorted(r["status"] for r in rows)


def quiet_output(captured: str, caplog: pytest.LogCaptureFixture) -> None:
    """No traceback reached the terminal (file descriptors 1 and 2), and MLflow, urllib3 and
    SQLAlchemy logged nothing at WARNING or above (the runner says what happened)."""
    assert "Traceback" not in captured, captured
    for noise in ("ERROR mlflow", "Retrying (Retry(", "WARNING mlflow", "sqlalchemy.exc"):
        assert noise not in captured, captured
    loud = [
        f"{r.name}: {r.getMessage()[:200]}"
        for r in caplog.records
        if r.name.startswith(("mlflow", "urllib3", "sqlalchemy")) and r.levelno >= logging.WARNING
    ]
    assert loud == []


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database (migrations take seconds; copy it instead)."""
    from suite.tracking.store import open_client

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    open_client(f"sqlite:///{path}")
    return path


# -- a tracking server killed during a cell -------------------------------------------------------
class Server:
    """``mlflow server`` on 127.0.0.1:``port`` over ``db``, in its own process group."""

    def __init__(self, folder: Path, db: Path, port: int) -> None:
        self.folder, self.db, self.port = folder, db, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        if not mlflow.exists():
            pytest.skip("the mlflow command is not installed next to this Python")
        log = open(self.folder / "server.log", "a")  # noqa: SIM115 (kept for a failing test)
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.db}"]
            + ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.25)
        self.kill()
        tail = (self.folder / "server.log").read_text()[-2000:]
        pytest.fail(f"mlflow server did not answer within {SERVER_START_S:.0f} s:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the server and every process it started."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path, template_db):
    db = tmp_path / "srv.db"
    db.write_bytes(template_db.read_bytes())
    srv = Server(tmp_path, db, free_port())
    yield srv
    srv.kill()


def test_a_server_killed_mid_cell_ends_in_one_message_and_the_rerun_records_it(
    server, tmp_path, monkeypatch, capfd, caplog
):
    """Two cells against a real ``mlflow server``, killed (SIGKILL, its whole process group)
    while cell 1 trains. The runner lets cell 1 finish, saves its result in its folder's
    summary.json, and within the retry budget (2 s here, tracking calls bounded in seconds)
    exits 1 with one message: the server, 'unreachable since', checkpoints kept, rerun to record;
    no traceback, no MLflow or urllib3 log line. The server is restarted on the same port and the
    same command is run again: cell 1 is recorded from summary.json (its process is not started
    again; its loss curve and final metrics are logged), its abandoned run is ended KILLED, cell
    2 trains, and each cell has exactly one FINISHED run."""
    monkeypatch.setenv("BNSUITE_TRACKING_RETRY_S", RETRY_S)
    monkeypatch.setenv("BNSUITE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    server.start()
    kill = f"import os, signal, time; os.killpg({server.proc.pid}, signal.SIGKILL); time.sleep(1)"
    starts = child(monkeypatch, tmp_path, hook=kill)
    path = _write_experiment(tmp_path, "outage", CELL, include=[{"seed": 0}, {"seed": 1}])
    workdir = tmp_path / "runs"
    args = ("run", str(path), "--tracking-uri", server.uri, "--workdir", str(workdir))
    capfd.readouterr()
    t0 = time.monotonic()
    code, out, err = cli(*args)
    elapsed = time.monotonic() - t0
    captured = capfd.readouterr()
    server.proc.wait()

    assert code == 1 and elapsed < 60, (code, elapsed)
    assert started(starts) == 1  # cell 2 is not started against a dead server
    (message,) = [line for line in err.splitlines() if "unreachable" in line]
    assert f"tracking server {server.uri} unreachable since " in message
    assert "checkpoints kept" in message and "rerun the same command to record" in message
    quiet_output(captured.out + captured.err + out + err, caplog)
    from suite.config import load_experiment

    first, second = (c.cell_id for c in load_experiment(path).cells())
    saved = cell_folder(workdir, "outage", first) / "summary.json"
    assert str(saved) in message
    blob = json.loads(saved.read_text())
    assert blob["metrics"]["train/loss_final"] == 0.25
    assert [step for step, _ in blob["history"]] == [1, 2, 3]
    assert "UNRECORDED" in out and "NOT STARTED" in out

    server.start()  # the same port, the same store
    monkeypatch.setattr(execute_module, "child_command", lambda *a, **k: [sys.executable, "-c",
        CHILD.format(starts=str(starts), hook="pass")])  # fmt: skip
    code, out, err = cli(*args)
    assert code == 0, err
    assert started(starts) == 2  # only cell 2 trained
    runs = by_cell(server.uri, "outage")
    assert statuses(runs[first]) == ["FINISHED", "KILLED"]
    assert statuses(runs[second]) == ["FINISHED"]
    (done,) = [r for r in runs[first] if r["status"] == "FINISHED"]
    assert done["metrics"]["train/loss_final"] == 0.25 and done["metrics"]["knn/top1"] == 0.5
    assert done["tags"]["suite.recorded_from"] == str(saved)
    from mlflow import MlflowClient

    history = MlflowClient(server.uri).get_metric_history(done["run_id"], "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


# -- a store whose disk is full -------------------------------------------------------------------
def full_store(small_filesystem, template_db, monkeypatch, tmp_path) -> tuple[str, Path]:
    """A migrated store on a 4 MiB tmpfs, its artifacts on the ordinary disk."""
    folder = small_filesystem("4m")
    db = folder / "mlflow.db"
    db.write_bytes(template_db.read_bytes())
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BNSUITE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri, folder


def test_a_full_store_before_a_cell_is_one_line_and_a_rerun_ends_what_it_left(
    small_filesystem, template_db, tmp_path, monkeypatch, capfd, caplog
):
    """The experiment exists, then the store's filesystem fills (a real tmpfs). run exits 1 with
    one line naming the store and 'disk full' and the space left; no traceback and no MLflow log
    line; no cell process is started. Once space is freed, the same command trains both cells
    and no run is left RUNNING."""
    uri, folder = full_store(small_filesystem, template_db, monkeypatch, tmp_path)
    starts = child(monkeypatch, tmp_path)
    path = _write_experiment(tmp_path, "full", CELL, include=[{"seed": 0}, {"seed": 1}])
    args = ("run", str(path), "--workdir", str(tmp_path / "runs"))
    from suite.tracking import Tracker

    Tracker(uri, "full")
    fill(folder)
    capfd.readouterr()
    code, out, err = cli(*args)
    captured = capfd.readouterr()
    assert code == 1, err
    (message,) = [line for line in err.splitlines() if "disk full" in line]
    assert message.startswith(f"bnsuite run: tracking store {uri} disk full since ")
    assert f"in {folder})" in message and "free of 4.0 MiB" in message
    quiet_output(captured.out + captured.err + out + err, caplog)
    assert started(starts) == 0

    (folder / "filler").unlink()
    code, out, err = cli(*args)
    assert code == 0, err
    runs = read_runs(uri, "full", status=None)
    assert "RUNNING" not in [r["status"] for r in runs]
    assert sorted(r["status"] for r in runs if r["status"] == "FINISHED") == ["FINISHED"] * 2


def test_a_store_filled_during_a_cell_keeps_its_result_for_the_rerun(
    small_filesystem, template_db, tmp_path, monkeypatch, capfd, caplog
):
    """The store's disk fills while the cell trains: the cell finishes, its result is saved in
    summary.json, run exits 1 with one 'disk full' line and no MLflow log line. After space is
    freed the rerun records the cell from summary.json (no process started), ends the run the
    outage left RUNNING, and leaves one FINISHED run."""
    uri, folder = full_store(small_filesystem, template_db, monkeypatch, tmp_path)
    hook = (
        f"f = open({str(folder / 'filler')!r}, 'wb', buffering=0)\n"
        "try:\n    while True: f.write(bytes(4096))\nexcept OSError: pass\n"
    )
    starts = child(monkeypatch, tmp_path, hook=hook)
    path = _write_experiment(tmp_path, "filling", CELL)
    args = ("run", str(path), "--workdir", str(tmp_path / "runs"))
    capfd.readouterr()
    code, out, err = cli(*args)
    captured = capfd.readouterr()
    assert code == 1, err
    (message,) = [line for line in err.splitlines() if "disk full" in line]
    assert "summary.json" in message and "free space on the store's disk" in message
    quiet_output(captured.out + captured.err + out + err, caplog)

    (folder / "filler").unlink()
    code, out, err = cli(*args)
    assert code == 0, err
    assert started(starts) == 1
    runs = read_runs(uri, "filling", status=None)
    assert sorted(r["status"] for r in runs) in (["FINISHED"], ["FINISHED", "KILLED"])
    (done,) = [r for r in runs if r["status"] == "FINISHED"]
    assert done["metrics"]["train/loss_final"] == 0.25
    for row in runs:
        if row["status"] == "KILLED":
            assert "stale" in row["tags"][FAILURE_TAG]


# -- checkpoint writes killed half-way ------------------------------------------------------------
def test_temporary_files_of_killed_checkpoint_writes_are_removed_when_the_lock_is_taken(
    tmp_path, monkeypatch, mlflow_tmp, template_db
):
    """``checkpoint.pt.<random>.tmp`` and a rank's ``checkpoint.rank1.pt.<random>.tmp`` left by
    killed writes are gone once the runner holds the cell's lock; the checkpoint and other files
    stay."""
    Path(mlflow_tmp.removeprefix("sqlite:///")).write_bytes(template_db.read_bytes())
    path = _write_experiment(tmp_path, "stale", CELL)
    from suite.config import load_experiment

    (cell,) = load_experiment(path).cells()
    folder = cell_folder(tmp_path / "runs", "stale", cell.cell_id)
    folder.mkdir(parents=True)
    stale = [folder / "checkpoint.pt.k2j4x.tmp", folder / "checkpoint.rank1.pt.q9zz1.tmp"]
    for file in stale:
        file.write_bytes(b"partial")
    (folder / "notes.tmp").write_text("mine")
    seen = tmp_path / "seen.txt"
    hook = (
        f"import os; open({str(seen)!r}, 'w').write(' '.join(sorted(os.listdir({str(folder)!r}))))"
    )
    child(monkeypatch, tmp_path, hook=hook)
    code, _, err = cli("run", str(path), "--workdir", str(tmp_path / "runs"))
    assert code == 0, err
    listing = seen.read_text().split()
    assert not any(name.startswith("checkpoint") and name.endswith(".tmp") for name in listing)
    assert "notes.tmp" in listing and "lock" in listing


# -- a work folder whose disk is full -------------------------------------------------------------
def test_a_full_workdir_fails_the_cell_naming_the_folder_and_its_free_space(
    small_filesystem, tmp_path, monkeypatch, mlflow_tmp, template_db, capfd
):
    """--workdir on a full filesystem (a real tmpfs): each cell fails with a reason that names
    its folder, 'No space left on device' and the space left, not a traceback; run exits 1 and
    the next cell is still tried."""
    Path(mlflow_tmp.removeprefix("sqlite:///")).write_bytes(template_db.read_bytes())
    workdir = small_filesystem("64k")
    fill(workdir)
    starts = child(monkeypatch, tmp_path)
    path = _write_experiment(tmp_path, "fullwork", CELL, include=[{"seed": 0}, {"seed": 1}])
    capfd.readouterr()
    code, out, err = cli("run", str(path), "--workdir", str(workdir))
    captured = capfd.readouterr()
    assert code == 1, err
    assert "Traceback" not in captured.out + captured.err + out + err
    assert started(starts) == 0
    assert "2 cell(s) failed" in err
    reasons = [line for line in err.splitlines() if line.startswith("  cell ")]
    assert len(reasons) == 2, err
    for reason in reasons:
        assert f"the cell folder {workdir}/fullwork/" in reason
        assert "No space left on device" in reason and "free of 64.0 KiB" in reason
