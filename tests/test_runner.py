"""The matrix runner: plan, shards, locks, the child protocol, and end-to-end runs that are killed,
resumed, sharded and diverge.

The end-to-end scenarios train real cells (synthetic images at 16 px, timm ``test_resnet``, a few
steps) in real child processes, so they share two module-scoped runs:

- ``resumed``: a 2-cell matrix whose ``bnsuite run`` is SIGKILLed while the second cell trains
  (the first is FINISHED, the second has a checkpoint), then run again in-process, then a third
  time (nothing to do);
- ``sharded``: a 3-cell matrix ``[diverging, good, good]`` run as ``--shard 1/2`` and ``--shard
  2/2`` at the same time against one SQLite store.

Cheap checks of the recording paths (a killed or crashing cell process, a locked cell) replace the
cell's command with a one-line Python script.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli
from cli_helpers import write_experiment as _write_experiment

from suite.cell import CellConfig
from suite.runner import (
    Shard,
    build_plan,
    cell_folder,
    load_plan,
    parse_shard,
    prepare,
    render_plan,
    run_plan,
)
from suite.runner import execute as execute_module
from suite.runner.child import (
    MARKER,
    Throughput,
    child_command,
    child_env,
    encode,
    parse,
    read_cell,
    torchrun_command,
    write_cell,
)
from suite.runner.lock import CellLock, is_locked
from suite.runner.plan import varying_fields
from suite.runner.progress import ProgressView, format_table
from suite.tracking import CELL_TAG, FAILURE_TAG, read_runs

TINY = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "cifar_stem": False,
    "method": {"name": "byol", "proj_hidden": 32, "proj_dim": 32, "pred_hidden": 32},
    "epochs": 1,
    "max_steps": 4,
    "batch_size": 32,
    "devices": 2,
    "optimizer": {"name": "sgd", "lr_per_256": 0.05, "warmup_epochs": 0},
    "eval": {"knn": {"k": 20, "temperature": 0.1}, "linear": {"epochs": 5}},
    "log_every": 1,
    "checkpoint_every": 2,
}


def write_experiment(folder: Path, name: str, **keys) -> Path:
    return _write_experiment(folder, name, TINY, **keys)


def runs_by_cell(uri: str, experiment: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in read_runs(uri, experiment, status=None):
        out.setdefault(row["cell_id"], []).append(row)
    return out


def statuses(rows: list[dict]) -> list[str]:
    return sorted(r["status"] for r in rows)


def cell_ids(path: Path) -> list[str]:
    from suite.config import load_experiment

    return [c.cell_id for c in load_experiment(path).cells()]


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database (migrations take seconds; copy it instead)."""
    from suite.tracking.store import open_client

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    open_client(f"sqlite:///{path}")
    return path


def fresh_store(folder: Path, template: Path) -> tuple[str, dict[str, str]]:
    """A store in ``folder`` (copied template) and the environment that points at it."""
    db = folder / "mlflow.db"
    db.write_bytes(template.read_bytes())
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "BNSUITE_ARTIFACT_ROOT": str(folder / "artifacts"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # tiny models; two shards share two cores
    }
    return env["MLFLOW_TRACKING_URI"], env


@pytest.fixture
def store(mlflow_tmp: str, template_db: Path) -> str:
    """The conftest's temporary store, pre-filled with the migrated template database."""
    Path(mlflow_tmp.removeprefix("sqlite:///")).write_bytes(template_db.read_bytes())
    return mlflow_tmp


# -- shards --------------------------------------------------------------------------------------
def test_parse_shard_accepts_k_of_n_from_one():
    """'2/3' → Shard(2, 3); spaces allowed; 1/1 is the whole matrix."""
    assert parse_shard("2/3") == Shard(2, 3)
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/2", "numbered from 1, so K must be in 1..2"),
        ("3/2", "K must be in 1..2"),
        ("1/0", "N must be at least 1"),
        ("a/b", "not of the form K/N"),
        ("2", "not of the form K/N"),
    ],
)
def test_parse_shard_rejects_bad_values_with_the_rule(text, message):
    """Each bad --shard names the value and the rule it breaks."""
    with pytest.raises(ValueError, match=message) as err:
        parse_shard(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_cells_round_robin(count):
    """The N shards of 11 cells are disjoint, cover all 11, and differ in size by at most one;
    cell i belongs to shard (i mod N) + 1."""
    items = list(range(11))
    shares = [Shard(k, count).select(items) for k in range(1, count + 1)]
    positions = sorted(p for share in shares for p, _ in share)
    assert positions == items
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    for k, share in enumerate(shares, 1):
        assert all(p % count == k - 1 for p, _ in share)


# -- protocol, progress, tables ------------------------------------------------------------------
def test_protocol_round_trip_and_plain_lines():
    """parse(encode(e, **f)) == {event: e, **f} (NaN included), also after a prefix; text → None."""
    line = encode("progress", step=3, total=8, loss=float("nan"), img_s=None)
    event = parse("[rank0]: " + line + "\n")
    assert event["event"] == "progress" and event["step"] == 3 and event["img_s"] is None
    assert event["loss"] != event["loss"]  # NaN survives
    assert parse("UserWarning: something\n") is None
    assert parse(MARKER + "{not json") is None
    assert parse(MARKER + '{"event": "unknown"}') is None
    with pytest.raises(ValueError, match="event"):
        encode("nonsense")


def test_progress_view_plain_lines_are_periodic_and_final():
    """Without a TTY: a short line for the first update, none within every_s, always the last
    step; no control codes (no carriage return, no escape sequence)."""
    stream = io.StringIO()
    view = ProgressView(stream, tty=False, every_s=3600)
    view.start("[1/1] abc")
    for step in range(1, 6):
        view.update(step, 5, loss=1.0 / step, img_s=100.0)
    view.message("[1/1] cell abc: FINISHED")
    view.clear()
    text = stream.getvalue()
    assert text.splitlines() == [
        "[1/1] abc 1/5 loss 1.0000 img/s 100",
        "[1/1] abc 5/5 loss 0.2000 img/s 100",
        "[1/1] cell abc: FINISHED",
    ]
    assert "\r" not in text and "\x1b" not in text


def test_progress_view_tty_draws_a_live_bar_and_removes_it():
    """On a TTY the bar (label, steps, loss, img/s) is redrawn in place with control codes, a
    message is a line of its own, and the bar is erased when the cell ends."""
    stream = io.StringIO()
    view = ProgressView(stream, tty=True)
    view.start("[1/1] cell-x")
    view.update(3, 5, loss=0.5, img_s=120.0)
    view.message("note")
    view.update(5, 5, loss=0.25, img_s=None)
    view.clear()
    text = stream.getvalue()
    assert "[1/1] cell-x" in text and "3/5" in text and "5/5" in text
    assert "loss 0.5000  img/s 120" in text and "loss 0.2500  img/s -" in text
    assert "\rnote\n" in text.replace("\x1b[2K", "")
    assert text.count("\r\x1b[2K[1/1] cell-x") >= 2  # redrawn in place
    assert text.endswith("\x1b[1A\x1b[2K")  # and erased when the cell ends


def test_table_columns_line_up_under_the_header():
    """Left-aligned columns, a rule under the header, '-' for None, markup-like text kept as is,
    a wide row never wrapped."""
    rows = [[1, None], ["[xyz]", 2.5], ["w", "x" * 300]]
    table = format_table(["a", "long header"], rows).splitlines()
    assert len(table) == 5
    at = table[0].index("long header")
    assert table[0].startswith("a ") and set(table[1]) <= {"─", " "}
    assert [r[:at].rstrip() for r in table[2:]] == ["1", "[xyz]", "w"]
    assert [r[at:] for r in table[2:]] == ["-", "2.5", "x" * 300]


def test_throughput_is_images_over_time_in_window():
    """img/s = batch · Δsteps / Δt over the window: 32 · 4 / 2 s = 64."""
    meter = Throughput(32, window=4)
    assert meter.update(1, now=0.0) is None
    for step in range(2, 6):
        value = meter.update(step, now=(step - 1) * 0.5)
    assert value == pytest.approx(64.0)


def test_cell_file_round_trip(tmp_path):
    """write_cell → read_cell gives the same CellConfig (same id); a tampered file is refused."""
    cell = CellConfig(experiment="x", seed=3, max_steps=2)
    path = write_cell(cell, tmp_path / "c" / "cell.json")
    assert read_cell(path) == cell
    blob = json.loads(path.read_text())
    blob["cell"]["seed"] = 4
    path.write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="cell id"):
        read_cell(path)


def test_the_cell_process_starts_through_the_hidden_cli_command(tmp_path):
    """The runner starts a cell as ``python -m suite _cell`` (``--nproc N`` makes it torchrun's
    trampoline); ``bnsuite --help`` does not list ``_cell``; a real ``_cell`` process given a
    tampered cell file reports an error event and exits 1."""
    path = write_cell(CellConfig(experiment="x", max_steps=1), tmp_path / "cell.json")
    one = child_command(1, path, tmp_path, "cpu")
    args = [str(path), "--workdir", str(tmp_path), "--device", "cpu"]
    assert one[1:] == ["-m", "suite", "_cell", *args]
    assert child_command(2, path, tmp_path, "cpu")[-2:] == ["--nproc", "2"]
    assert torchrun_command(2, args)[-8:] == ["-m", "suite", "_cell", *args]
    code, out, _ = cli("--help")
    assert code == 0 and "  run " in out and "_cell" not in out
    blob = json.loads(path.read_text())
    blob["cell"]["seed"] = 4
    path.write_text(json.dumps(blob))
    result = subprocess.run(one, capture_output=True, text=True, env=child_env("sqlite:///unused"))
    assert result.returncode == 1
    events = [parse(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events if e] == ["error"]
    assert "cell id" in next(e for e in events if e)["reason"]


# -- locks ---------------------------------------------------------------------------------------
def test_cell_lock_excludes_a_second_holder_until_released(tmp_path):
    """A held lock refuses a second acquire (another open file) and is free after release."""
    path = tmp_path / "cell" / "lock"
    first, second = CellLock(path), CellLock(path)
    assert first.acquire()
    assert not second.acquire()
    assert is_locked(path)
    first.release()
    assert not is_locked(path)
    assert second.acquire()
    second.release()


# -- dying with the runner -----------------------------------------------------------------------
def process_gone(pid: int, wait_s: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie awaiting its reaper)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux")
def test_die_with_parent_ends_a_silent_child_when_its_parent_is_killed():
    """A child that called die_with_parent and then only sleeps (never writes) is gone after its
    parent is SIGKILLed; without the request it would sleep for ten minutes."""
    child = (
        "import os, time; from suite.runner.child import die_with_parent; "
        "die_with_parent(int(os.environ['PARENT'])); print('ready', flush=True); time.sleep(600)"
    )
    parent = (
        "import os, subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], "
        "env={**os.environ, 'PARENT': str(os.getpid())}); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    gone = process_gone(child_pid)
    if not gone:
        os.kill(child_pid, signal.SIGKILL)
    assert gone


def test_die_with_parent_exits_when_the_parent_is_already_another():
    """die_with_parent(expected) exits at once (status 1) when the parent is not ``expected``
    (the runner died before the request could take effect)."""
    script = "from suite.runner.child import die_with_parent; die_with_parent(1); print('alive')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1 and "alive" not in result.stdout


# -- plan ----------------------------------------------------------------------------------------
def test_varying_fields_are_the_axes():
    """Only fields that differ between cells are axes; the experiment name never is."""
    cells = [
        CellConfig(experiment="e", seed=0, student_bn="local"),
        CellConfig(experiment="e", seed=1, student_bn="sync"),
    ]
    assert varying_fields(cells) == ["student_bn", "seed"]
    assert varying_fields(cells[:1]) == []


def test_view_fields_are_axes_only_where_they_vary_within_one_method():
    """MoCo's recipe differs from BYOL's: that shows as method.name, not as aug.* columns; a view
    value that differs between two BYOL cells is an axis."""
    from suite.cell import AugConfig, MethodConfig
    from suite.views import view_specs

    byol, moco = AugConfig(*view_specs("byol")), AugConfig(*view_specs("mocov2"))
    cells = [CellConfig(aug=byol), CellConfig(method=MethodConfig("mocov2"), aug=moco)]
    assert varying_fields(cells) == ["method.name"]
    flipless = AugConfig(*(dataclasses.replace(v, flip_p=0.0) for v in view_specs("byol")))
    cells.append(CellConfig(aug=flipless))
    assert varying_fields(cells) == ["aug.view1.flip_p", "aug.view2.flip_p", "method.name"]


def test_plan_lists_ids_axes_and_pending_without_training(tmp_path, store):
    """plan: one row per cell with its id, the varying axis (seed) and 'pending'; the shard 2/2
    view holds only cell 1; nothing is recorded or created in the work folder."""
    path = write_experiment(tmp_path, "plan", matrix={"seed": [0, 1, 2]})
    ids = cell_ids(path)
    code, out, _ = cli("plan", str(path), "--workdir", str(tmp_path / "runs"))
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("0", ids[0], "0", "pending"),
        ("1", ids[1], "1", "pending"),
        ("2", ids[2], "2", "pending"),
    ]
    assert "seed" in out and "3 cells, 0 done, 3 pending" in out
    code, out, _ = cli("plan", str(path), "--shard", "2/2")
    assert code == 0 and "shard 2/2: 1 of 3 cells" in out
    assert ids[1] in out and ids[0] not in out and ids[2] not in out
    assert read_runs(store, "plan", status=None) == []
    assert not (tmp_path / "runs").exists()


# -- recording paths with a stand-in cell process ------------------------------------------------
def fake_child(script: str):
    """A ``child_command`` replacement that runs ``script`` instead of training."""

    def command(nproc, cell_file, workdir, device):
        return [sys.executable, "-c", script]

    return command


def run_with_fake_child(monkeypatch, tmp_path, script: str, experiment: str):
    monkeypatch.setattr(execute_module, "child_command", fake_child(script))
    path = write_experiment(tmp_path, experiment)
    plan = load_plan(path)
    tracker = prepare(plan, "cpu")
    report = run_plan(plan, tracker, workdir=tmp_path / "runs", view=ProgressView(io.StringIO()))
    return plan, report


def test_killed_cell_process_is_recorded_failed_with_signal(store, tmp_path, monkeypatch):
    """A cell process killed by SIGKILL (as by the OOM killer) → run FAILED, suite.failure names
    SIGKILL; the report's exit code is 1."""
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    plan, report = run_with_fake_child(monkeypatch, tmp_path, script, "oom")
    (row,) = read_runs(store, "oom", status=None)
    assert row["status"] == "FAILED"
    assert "killed by signal SIGKILL" in row["tags"][FAILURE_TAG]
    assert report.exit_code == 1 and [o.status for o in report.outcomes] == ["FAILED"]


def test_crashing_cell_process_reason_is_its_last_output(store, tmp_path, monkeypatch):
    """A process that exits 3 without an event → FAILED, reason quotes its last output line, and
    the output is kept in the cell's log.txt."""
    script = "import sys; print('segfault-like crash here'); sys.exit(3)"
    plan, report = run_with_fake_child(monkeypatch, tmp_path, script, "crash")
    (row,) = read_runs(store, "crash", status=None)
    reason = row["tags"][FAILURE_TAG]
    assert row["status"] == "FAILED" and "exited with status 3" in reason
    assert "segfault-like crash here" in reason
    log = cell_folder(tmp_path / "runs", "crash", plan.cells[0].cell_id) / "log.txt"
    assert "segfault-like crash here" in log.read_text()


def test_cell_locked_by_another_runner_is_skipped_and_reported(store, tmp_path, monkeypatch):
    """A cell whose lock is held elsewhere is not started (no run, no process) and reported busy."""
    path = write_experiment(tmp_path, "busy")
    (cid,) = cell_ids(path)
    holder = CellLock(cell_folder(tmp_path / "runs", "busy", cid) / "lock")
    assert holder.acquire()
    try:
        monkeypatch.setattr(execute_module, "child_command", fake_child("raise SystemExit(9)"))
        plan = load_plan(path)
        report = run_plan(plan, prepare(plan, "cpu"), workdir=tmp_path / "runs")
    finally:
        holder.release()
    assert [o.status for o in report.outcomes] == ["BUSY"]
    assert report.exit_code == 0 and report.busy
    assert read_runs(store, "busy", status=None) == []


def test_interrupted_runner_records_killed_with_a_readable_reason(store, tmp_path, monkeypatch):
    """Ctrl-C (a bare KeyboardInterrupt, whose text is empty) while a cell is watched: the run
    ends KILLED with reason 'the runner was interrupted (Ctrl-C, SIGINT)', not '()'; the report
    says interrupted (exit 130)."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(execute_module, "_watch", interrupted)
    script = "import time; time.sleep(30)"
    plan, report = run_with_fake_child(monkeypatch, tmp_path, script, "ctrlc")
    (row,) = read_runs(store, "ctrlc", status=None)
    assert row["status"] == "KILLED"
    assert row["tags"][FAILURE_TAG] == "the runner was interrupted (Ctrl-C, SIGINT)"
    assert report.interrupted and report.exit_code == 130


def test_interrupted_reason_keeps_a_signal_name():
    """SIGTERM arrives as KeyboardInterrupt('signal SIGTERM'): the reason names the signal."""
    exc = KeyboardInterrupt("signal SIGTERM")
    assert execute_module.interrupted_reason(exc) == "the runner was interrupted (signal SIGTERM)"


# -- end to end: a cell whose weights explode under a bounded loss -------------------------------
def test_cell_with_exploding_weights_ends_failed_naming_step_and_tensor(store, tmp_path):
    """lr_per_256 = 1e6 for 5 steps: BYOL's loss stays bounded while weights and BN statistics
    explode. Through the runner (a real child process) the run ends FAILED — not FINISHED with
    chance accuracy — its reason names TrainingDiverged, step 5 and the tensor, no probe metric
    is recorded, and the exit code is 1."""
    path = write_experiment(
        tmp_path,
        "exploding",
        optimizer={"name": "sgd", "lr_per_256": 1.0e6, "warmup_epochs": 0},
        max_steps=5,
        log_every=5,
        checkpoint_every=5,
    )
    plan = load_plan(path)
    report = run_plan(plan, prepare(plan, "cpu"), workdir=tmp_path / "runs", device="cpu")
    (row,) = read_runs(store, "exploding", status=None)
    reason = row["tags"][FAILURE_TAG]
    assert row["status"] == "FAILED" and report.exit_code == 1
    assert reason.startswith("TrainingDiverged: at step 5: ")
    tensor = reason.removeprefix("TrainingDiverged: at step 5: ").split()[0]
    assert tensor.startswith(("student.", "teacher.")) and "is diverged" in reason
    assert not any(key.startswith(("knn/", "linear/")) for key in row["metrics"])


# -- end to end: killed, resumed, skipped --------------------------------------------------------
@pytest.fixture(scope="module")
def resumed(tmp_path_factory, template_db):
    """Run a 2-cell matrix as a subprocess, SIGKILL it once the second cell has a checkpoint,
    then run it again (in-process) and a third time."""
    folder = tmp_path_factory.mktemp("resumed")
    uri, env = fresh_store(folder, template_db)
    # cell 2 trains 16 steps, so the kill (after its first checkpoint, step 2) lands mid-cell
    path = write_experiment(folder, "resume", include=[{"seed": 0}, {"seed": 1, "max_steps": 16}])
    ids = cell_ids(path)
    workdir = folder / "runs"
    args = ["run", str(path), "--workdir", str(workdir), "--device", "cpu"]
    out: dict = {"uri": uri, "path": path, "ids": ids, "workdir": workdir}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        out["plan_before"] = cli("plan", str(path))
        log = (folder / "first_run.log").open("w")  # kept for a failing test's reader
        proc = subprocess.Popen(
            [sys.executable, "-m", "suite", *args],
            cwd=folder,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        checkpoint = cell_folder(workdir, "resume", ids[1]) / "checkpoint.pt"
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        out["runs_after_kill"] = runs_by_cell(uri, "resume")
        out["second"] = cli(*args)
        out["runs"] = runs_by_cell(uri, "resume")
        out["third"] = cli(*args)
        out["runs_after_third"] = runs_by_cell(uri, "resume")
        out["plan_after"] = cli("plan", str(path))
    return out


def test_kill_mid_matrix_then_rerun_completes_with_one_finished_run_per_cell(resumed):
    """After SIGKILL during cell 2: cell 1 FINISHED, cell 2 RUNNING (left behind); the rerun exits
    0 and leaves exactly one FINISHED run per cell, the abandoned run ended KILLED."""
    first, second = resumed["ids"]
    after_kill = resumed["runs_after_kill"]
    assert statuses(after_kill[first]) == ["FINISHED"]
    assert statuses(after_kill[second]) == ["RUNNING"]
    assert resumed["second"][0] == 0
    runs = resumed["runs"]
    assert statuses(runs[first]) == ["FINISHED"]
    assert statuses(runs[second]) == ["FINISHED", "KILLED"]


def test_interrupted_cell_resumes_from_its_checkpoint(resumed):
    """The rerun of cell 2 starts at the checkpointed step (train/resumed_at >= checkpoint_every),
    trains to max_steps, while cell 1 trained from 0."""
    first, second = resumed["ids"]
    runs = resumed["runs"]
    done = {cid: next(r for r in rows if r["status"] == "FINISHED") for cid, rows in runs.items()}
    assert done[second]["metrics"]["train/resumed_at"] >= TINY["checkpoint_every"]
    assert done[second]["metrics"]["train/steps"] == 16
    assert done[first]["metrics"]["train/resumed_at"] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_runner_sigkill_takes_the_cell_process_with_it(resumed):
    """The cell process recorded on the abandoned run (tag suite.cell_pid) is gone after the
    runner was SIGKILLed."""
    (left,) = resumed["runs_after_kill"][resumed["ids"][1]]
    pid = int(left["tags"]["suite.cell_pid"])
    gone = process_gone(pid)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    assert gone, f"cell process {pid} outlived its runner"


def test_finished_run_holds_params_tags_metrics_and_summary(resumed):
    """A FINISHED run: params = cell.flat(), tags cell id and eval encoder, the loss per step and
    the final metrics (knn, linear, speed), artifacts config.json and summary.json."""
    from mlflow import MlflowClient

    from suite.config import load_experiment

    uri = resumed["uri"]
    cell = load_experiment(resumed["path"]).cells()[0]
    (row,) = resumed["runs"][cell.cell_id]
    flat = {k: str(v) for k, v in cell.flat().items()}
    assert row["params"] == {**flat, "eval.bn_statistics": "device0"}
    assert row["tags"][CELL_TAG] == cell.cell_id
    assert row["tags"]["suite.eval_encoder"] == "student"
    metrics = row["metrics"]
    expected = {
        *("knn/top1", "knn/top5", "linear/top1", "linear/top5", "linear/best_top1"),
        *("images_per_s", "step_ms", "data_wait_fraction", "peak_memory_mb", "wall_time_s"),
        *("knn/top1_random_init", "linear/top1_random_init", "train/loss", "train/lr"),
    }
    assert expected <= set(metrics), expected - set(metrics)
    client = MlflowClient(uri)
    history = client.get_metric_history(row["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(1, cell.max_steps + 1))
    names = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {"config.json", "summary.json"} <= names
    local = client.download_artifacts(row["run_id"], "summary.json", str(resumed["workdir"]))
    summary = json.loads(Path(local).read_text())
    assert summary["cell_id"] == cell.cell_id and summary["eval_encoder"] == "student"
    assert summary["protocol"]["knn"] == {"k": 20, "temperature": 0.1}
    assert summary["metrics"]["knn/top1"] == pytest.approx(metrics["knn/top1"])


def test_third_run_skips_finished_cells(resumed):
    """With every cell FINISHED, run trains nothing: exit 0, 'nothing to do', no new runs."""
    code, out, _ = resumed["third"]
    assert code == 0 and "nothing to do: all 2 cells are done" in out
    assert out.count("done (skipped)") == 2
    assert resumed["runs_after_third"] == resumed["runs"]


def test_plan_shows_pending_before_and_done_after(resumed):
    """plan before the first run: 0 done, 2 pending; after the rerun: 2 done with accuracies."""
    assert "2 cells, 0 done, 2 pending" in resumed["plan_before"][1]
    code, out, _ = resumed["plan_after"]
    assert code == 0 and "2 cells, 2 done, 0 pending" in out
    for cid in resumed["ids"]:
        (row,) = [line for line in out.splitlines() if cid in line]
        assert " done " in row


# -- end to end: two concurrent shards, one diverging cell ----------------------------------------
@pytest.fixture(scope="module")
def sharded(tmp_path_factory, template_db):
    """[lr 1e30 (diverges), good seed 0, good seed 1] as --shard 1/2 (cells 0, 2) and 2/2 (cell 1)
    started together against one SQLite store."""
    folder = tmp_path_factory.mktemp("sharded")
    uri, env = fresh_store(folder, template_db)
    path = write_experiment(
        folder,
        "shards",
        matrix={"optimizer": [{"lr_per_256": 1.0e30}, {"lr_per_256": 0.05}]},
        include=[{"seed": 1}],
        eval={**TINY["eval"], "random_init_floor": False},
    )
    command = [sys.executable, "-m", "suite", "run", str(path), "--workdir", str(folder / "runs")]
    procs = [
        subprocess.Popen(
            [*command, "--device", "cpu", "--shard", shard],
            cwd=folder,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in ("1/2", "2/2")
    ]
    outputs = [p.communicate(timeout=280) for p in procs]
    results = [(p.returncode, *o) for p, o in zip(procs, outputs, strict=True)]
    runs = runs_by_cell(uri, "shards")
    return {"uri": uri, "path": path, "ids": cell_ids(path), "results": results, "runs": runs}


def test_concurrent_shards_record_every_cell_exactly_once(sharded):
    """Each cell has exactly one run in the shared store: the two good cells one FINISHED run
    each, the diverging cell one FAILED run; no cell is lost or duplicated."""
    bad, good0, good1 = sharded["ids"]
    runs = sharded["runs"]
    assert set(runs) == {bad, good0, good1}
    assert statuses(runs[good0]) == ["FINISHED"]
    assert statuses(runs[good1]) == ["FINISHED"]
    assert statuses(runs[bad]) == ["FAILED"]
    code, out, _ = sharded["results"][1]  # shard 2/2: cell 1 only
    assert code == 0 and good0 in out and bad not in out and good1 not in out
    assert bad in sharded["results"][0][1] and good1 in sharded["results"][0][1]


def test_diverging_cell_fails_cleanly_and_its_sibling_finishes(sharded):
    """Shard 1/2: the lr 1e30 cell diverges (FAILED, suite.failure names TrainingDiverged and the
    step), the next cell of the same shard still trains and finishes, and the command exits 1
    listing the failed cell."""
    bad, _, good1 = sharded["ids"]
    (failed,) = sharded["runs"][bad]
    reason = failed["tags"][FAILURE_TAG]
    assert reason.startswith(("TrainingDiverged: loss became", "TrainingDiverged: at step"))
    assert "at step" in reason
    (sibling,) = sharded["runs"][good1]
    assert sibling["start_time"] > failed["start_time"] and sibling["status"] == "FINISHED"
    code, out, err = sharded["results"][0]
    assert code == 1
    assert "1 cell(s) failed" in err and bad in err and "TrainingDiverged" in err
    assert "1 FAILED, 1 FINISHED" in out


def test_plan_after_shards_shows_the_failed_cell_pending(sharded, monkeypatch):
    """The failed cell stays pending (retried by the next run); the others are done."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sharded["uri"])
    bad, good0, good1 = sharded["ids"]
    from suite.config import load_experiment

    plan = build_plan(load_experiment(sharded["path"]), sharded["uri"])
    state = {c.cell_id: c.state for c in plan.cells}
    assert state == {bad: "pending (last run FAILED)", good0: "done", good1: "done"}
    assert "1 pending" in render_plan(plan)
