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
(:class:`suite.runner.lock.CellLock`), removes the temporary files of checkpoint writes that were
killed, and re-reads the store under the lock, so a cell that another runner finished meanwhile is
not trained again.

When the store stops answering (:class:`~suite.tracking.faults.StoreFault`: a server unreachable
for the retry budget, a full disk), the cell's process trains on and its metrics wait in the run's
queue; its result is written to ``summary.json`` in the cell folder before it is logged
(:mod:`suite.runner.saved`). At the end the result is logged with one more attempt (the retry
budget was spent when the fault was met); if the store is still gone, the outcome carries the
fault (the matrix stops there) and a rerun records the cell from that file instead of training it
again. One outage costs one retry budget, about 30 s, not MLflow's minutes per call.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from suite import disk
from suite.runner.child import child_command, child_env, parse, write_cell
from suite.runner.lock import CellLock
from suite.runner.outcome import (
    BUSY,
    NOT_STARTED,
    SKIPPED,
    UNRECORDED,
    CellOutcome,
    cell_tags,
    numeric,
    summary,
)
from suite.runner.plan import PlannedCell, cell_folder
from suite.runner.progress import ProgressView
from suite.runner.saved import read_saved, record_saved, write_saved
from suite.tracking.faults import StoreFault, retry_budget

if TYPE_CHECKING:
    from suite.tracking import CellRun, Tracker

STOP_GRACE_S = 10.0
TAIL_LINES = 20


@dataclass
class _Report:
    """The events of one cell process, as they arrive."""

    device: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    fault: StoreFault | None = None  # the first store fault while the cell ran
    unsent_tags: dict[str, Any] = field(default_factory=dict)


def interrupted_reason(exc: BaseException) -> str:
    """``the runner was interrupted (<why>)``: the exception's text when it has one (SIGTERM is
    raised as ``KeyboardInterrupt("signal SIGTERM")``), else ``Ctrl-C, SIGINT`` for a bare
    KeyboardInterrupt, else the exception's type (an exception's truth value says nothing about
    its text, so the text itself is tested)."""
    text = str(exc).strip()
    if not text:
        text = "Ctrl-C, SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
    return f"the runner was interrupted ({text})"


def folder_error(folder: Path, exc: OSError) -> str:
    """The reason of a cell whose folder cannot be written: the folder, the error and the free
    space there (a full disk is the usual cause)."""
    return (
        f"the cell folder {folder} cannot be written ({type(exc).__name__}: "
        f"{exc.strerror or exc}; {disk.free_space(disk.nearest_existing(folder))}); free space "
        "there or choose another --workdir"
    )


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
            values, step = numeric(event.get("values", {})), int(event.get("step") or 0)
            report.history.append((step, values))
            if report.fault is not None:
                run.queue_metrics(values, step=step)  # kept for the store's return
            else:
                _to_store(report, run.log_metrics, values, step=step)
        elif kind == "device":
            report.device = str(event.get("name"))
            tags = {"suite.device": report.device, "suite.cell_pid": event.get("pid")}
            if not _to_store(report, run.set_tags, tags):
                report.unsent_tags.update(tags)
        elif kind == "result":
            report.result = dict(event.get("metrics", {}))
        elif kind == "error":
            report.error = str(event.get("reason"))
            report.traceback = event.get("traceback")
    logf.flush()
    return report


def _to_store(report: _Report, call: Any, *args: Any, **kwargs: Any) -> bool:
    """``call(*args, **kwargs)`` unless the store failed earlier in this cell; a store fault is
    kept in ``report`` (the cell trains on), not raised. True when the call went through."""
    if report.fault is not None:
        return False
    try:
        call(*args, **kwargs)
    except StoreFault as fault:
        report.fault = fault
        return False
    return True


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
    """Lock the cell's folder, open its run, train it in a child process, record the result; a
    cell trained earlier whose result the store never got is recorded from its saved
    ``summary.json`` instead (module docstring)."""
    from suite.runtime import remove_stale_temp_files

    cell = planned.cell
    folder = cell_folder(workdir, tracker.experiment, cell.cell_id)
    lock = CellLock(folder / "lock")
    try:
        held = lock.acquire()
    except OSError as exc:
        return CellOutcome(planned, "FAILED", folder_error(folder, exc))
    if not held:
        return CellOutcome(planned, BUSY, f"locked by another runner ({folder / 'lock'})")
    try:
        remove_stale_temp_files(folder)
        try:
            finished = tracker.finished_cell_ids()
        except StoreFault as fault:
            return CellOutcome(planned, NOT_STARTED, str(fault), fault=fault)
        if cell.cell_id in finished:
            return CellOutcome(planned, SKIPPED, "finished by another runner meanwhile")
        saved = read_saved(folder, cell.cell_id)
        if saved is not None:
            return record_saved(planned, tracker, folder, saved)
        return _run_child(planned, tracker, folder, device, view)
    finally:
        lock.release()


def _run_child(
    planned: PlannedCell, tracker: Tracker, folder: Path, device: str, view: ProgressView
) -> CellOutcome:
    cell = planned.cell
    log = folder / "log.txt"
    try:
        command = child_command(cell.nproc, write_cell(cell, folder / "cell.json"), folder, device)
    except OSError as exc:  # before any run is opened: nothing to end
        return CellOutcome(planned, "FAILED", folder_error(folder, exc))
    try:
        run = tracker.start_cell(cell, extra_tags=cell_tags(cell, folder))
    except StoreFault as fault:
        return CellOutcome(planned, NOT_STARTED, str(fault), fault=fault)
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
        if disk.is_full_error(exc):
            reason = folder_error(folder, exc)
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
    # a store that failed during the cell has had its retry budget: one more attempt, no waiting
    with retry_budget(0) if report.fault is not None else contextlib.nullcontext():
        if returncode == 0 and report.result is not None:
            return _record_result(planned, run, folder, report)
        reason = _failure_reason(report, returncode, log)
        if report.traceback and report.fault is None:
            with contextlib.suppress(Exception):
                run.log_text(report.traceback, "traceback.txt")
        try:
            run.finish("FAILED", reason)
        except StoreFault as fault:
            return CellOutcome(planned, "FAILED", reason, {}, run.run_id, log, fault=fault)
        return CellOutcome(planned, "FAILED", reason, {}, run.run_id, log)


def _record_result(
    planned: PlannedCell, run: CellRun, folder: Path, report: _Report
) -> CellOutcome:
    """Save the result in the cell folder, then log it and end the run FINISHED (the queued
    metrics of an outage included, when the store is back)."""
    cell, log = planned.cell, folder / "log.txt"
    metrics = report.result or {}
    record = summary(cell, run.run_id, metrics, report.device)
    try:
        saved: Path | None = write_saved(folder, record, report.history)
        unsaved = ""
    except OSError as exc:
        saved, unsaved = None, f"; its summary.json could not be saved either ({exc})"
    try:
        if report.unsent_tags:
            run.set_tags(report.unsent_tags)
        run.log_metrics(numeric(metrics), step=int(metrics.get("train/steps", 0) or 0))
        run.log_dict(record, "summary.json")
        run.finish("FINISHED")
        return CellOutcome(planned, "FINISHED", None, metrics, run.run_id, log)
    except StoreFault as fault:
        status = UNRECORDED if saved is not None else "FAILED"
        reason = f"trained, but not recorded: {fault}{unsaved}"
        return CellOutcome(planned, status, reason, metrics, run.run_id, log, fault, saved)
    except Exception as exc:  # the cell trained, but its result could not be stored
        reason = f"recording the result failed: {type(exc).__name__}: {exc}"
    try:
        run.finish("FAILED", reason)
    except StoreFault as fault:
        return CellOutcome(planned, "FAILED", reason, {}, run.run_id, log, fault, saved)
    return CellOutcome(planned, "FAILED", reason, {}, run.run_id, log)


__all__ = [
    "BUSY",
    "NOT_STARTED",
    "SKIPPED",
    "UNRECORDED",
    "CellOutcome",
    "numeric",
    "summary",
    "train_and_record",
]
