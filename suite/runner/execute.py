"""Train one cell in its own process and record it: the runner's side of a cell.

Who records what. The runner (this module) owns the cell's MLflow run from start to end: it opens
the run (tags, params ``cell.flat()``, resolved config — :meth:`Tracker.start_cell`) *before* it
starts the cell's process, logs the metric events that process streams (the loss and schedules
every ``cell.log_every`` steps), and at the end logs the final metrics, ``summary.json`` and the
status. The cell's process only trains and reports (:mod:`suite.runner.child`), so whatever
happens to it — a Python error, a non-finite loss, an out-of-memory kill, a segfault — the run
ends FAILED with the reason in tag ``suite.failure``. If the runner itself dies, the run stays
RUNNING until the next ``start_cell`` of that cell ends it KILLED (stale).

Only one process at a time works on a cell folder: the runner takes its lock file first
(:class:`suite.runner.lock.CellLock`) and re-reads the store under the lock, so a cell that another
runner finished meanwhile is not trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from suite.cell import EVAL_BN_STATISTICS
from suite.runner.child import child_command, child_env, parse, write_cell
from suite.runner.lock import CellLock
from suite.runner.plan import PlannedCell, cell_folder
from suite.runner.progress import ProgressView

if TYPE_CHECKING:
    from suite.cell import CellConfig
    from suite.tracking import CellRun, Tracker

EVAL_ENCODER_TAG = "suite.eval_encoder"
STOP_GRACE_S = 10.0
TAIL_LINES = 20

# outcome statuses besides MLflow's FINISHED / FAILED / KILLED
SKIPPED = "SKIPPED"  # finished by another runner meanwhile
BUSY = "BUSY"  # locked by another live runner


@dataclass
class CellOutcome:
    """What became of one pending cell in this invocation."""

    planned: PlannedCell
    status: str
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    log: Path | None = None


@dataclass
class _Report:
    """The events of one cell process, as they arrive."""

    device: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


def summary(cell: CellConfig, run_id: str, metrics: dict[str, Any], device: str | None) -> dict:
    """The ``summary.json`` artifact: the metrics with the cell id, the evaluated encoder and the
    evaluation protocol that produced them (the cell's ``eval`` keys, ``encoder`` resolved)."""
    protocol = {
        **dataclasses.asdict(cell.eval),
        "encoder": cell.eval_encoder,
        "bn_statistics": EVAL_BN_STATISTICS,
    }
    return {
        "experiment": cell.experiment,
        "cell_id": cell.cell_id,
        "run_id": run_id,
        "eval_encoder": cell.eval_encoder,
        "protocol": protocol,
        "device": device,
        "metrics": metrics,
    }


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries MLflow can store as metrics (numbers, not booleans)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def interrupted_reason(exc: BaseException) -> str:
    """``the runner was interrupted (<why>)``: the exception's text when it has one (SIGTERM is
    raised as ``KeyboardInterrupt("signal SIGTERM")``), else ``Ctrl-C, SIGINT`` for a bare
    KeyboardInterrupt, else the exception's type (an exception's truth value says nothing about
    its text, so the text itself is tested)."""
    text = str(exc).strip()
    if not text:
        text = "Ctrl-C, SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
    return f"the runner was interrupted ({text})"


def _failure_reason(report: _Report, returncode: int, log: Path) -> str:
    if report.error:
        return report.error
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        why = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the cell's process was killed by signal {name or -returncode}{why}; log: {log}"
    last = next((line for line in reversed(report.tail) if line.strip()), "")
    return (
        f"the cell's process exited with status {returncode} without a result"
        + (f"; last output: {last.strip()}" if last else "")
        + f"; log: {log}"
    )


def _watch(proc: subprocess.Popen, run: CellRun, view: ProgressView, logf: IO[str]) -> _Report:
    """Consume the cell process's output until it closes: events → run/view, the rest → log."""
    report = _Report()
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", errors="replace")
        event = parse(line)
        if event is None:
            logf.write(line)
            report.tail.append(line)
            continue
        kind = event["event"]
        if kind == "progress":
            view.update(event["step"], event["total"], event.get("loss"), event.get("img_s"))
        elif kind == "metrics":
            run.log_metrics(numeric(event.get("values", {})), step=event.get("step"))
        elif kind == "device":
            report.device = str(event.get("name"))
            run.set_tags({"suite.device": report.device, "suite.cell_pid": event.get("pid")})
        elif kind == "result":
            report.result = dict(event.get("metrics", {}))
        elif kind == "error":
            report.error = str(event.get("reason"))
            report.traceback = event.get("traceback")
    logf.flush()
    return report


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def train_and_record(
    planned: PlannedCell,
    tracker: Tracker,
    *,
    workdir: Path,
    device: str,
    view: ProgressView,
) -> CellOutcome:
    """Lock the cell's folder, open its run, train it in a child process, record the result."""
    cell = planned.cell
    folder = cell_folder(workdir, tracker.experiment, cell.cell_id)
    lock = CellLock(folder / "lock")
    if not lock.acquire():
        return CellOutcome(planned, BUSY, f"locked by another runner ({folder / 'lock'})")
    try:
        if cell.cell_id in tracker.finished_cell_ids():
            return CellOutcome(planned, SKIPPED, "finished by another runner meanwhile")
        return _run_child(planned, tracker, folder, device, view)
    finally:
        lock.release()


def _run_child(
    planned: PlannedCell, tracker: Tracker, folder: Path, device: str, view: ProgressView
) -> CellOutcome:
    cell = planned.cell
    log = folder / "log.txt"
    run = tracker.start_cell(
        cell, extra_tags={EVAL_ENCODER_TAG: cell.eval_encoder, "suite.workdir": str(folder)}
    )
    command = child_command(cell.nproc, write_cell(cell, folder / "cell.json"), folder, device)
    proc = None
    try:
        with open(log, "a") as logf:
            logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} run {run.run_id}: {command}\n")
            logf.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_env(tracker.uri),
            )
            report = _watch(proc, run, view, logf)
            returncode = proc.wait()
    except Exception as exc:  # the runner's side broke (e.g. the store): this cell fails
        if proc is not None:
            _stop(proc)
        reason = f"the runner failed while watching the cell: {type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            run.finish("FAILED", reason)
        return CellOutcome(planned, "FAILED", reason, {}, run.run_id, log)
    except BaseException as exc:  # Ctrl-C, or SIGTERM turned into KeyboardInterrupt
        if proc is not None:
            _stop(proc)
        with contextlib.suppress(Exception):
            run.finish("KILLED", interrupted_reason(exc))
        raise
    finally:
        view.clear()
    if returncode == 0 and report.result is not None:
        metrics = report.result
        try:
            run.log_metrics(numeric(metrics), step=int(metrics.get("train/steps", 0) or 0))
            run.log_dict(summary(cell, run.run_id, metrics, report.device), "summary.json")
            run.finish("FINISHED")
            return CellOutcome(planned, "FINISHED", None, metrics, run.run_id, log)
        except Exception as exc:  # the cell trained, but its result could not be stored
            reason = f"recording the result failed: {type(exc).__name__}: {exc}"
    else:
        reason = _failure_reason(report, returncode, log)
    if report.traceback:
        with contextlib.suppress(Exception):
            run.log_text(report.traceback, "traceback.txt")
    run.finish("FAILED", reason)
    return CellOutcome(planned, "FAILED", reason, {}, run.run_id, log)


__all__ = ["BUSY", "SKIPPED", "CellOutcome", "numeric", "summary", "train_and_record"]
