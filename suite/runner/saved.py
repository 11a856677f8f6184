"""A trained cell's result kept in its own folder until the tracking store has it.

``<workdir>/<experiment>/<cell_id>/summary.json`` is written (atomically) by the runner as soon as
the cell's process reports its result, before any of that result is logged: the ``summary.json``
artifact (:func:`suite.runner.outcome.summary`) plus ``history``, every metrics event the cell
streamed as ``[step, {name: value}]`` pairs in order. When the store stops answering before the
result is logged, the file is what is left; the next ``bnsuite run`` of a cell that has no
FINISHED run but this file records the cell from it (a new run: history, final metrics, artifact)
instead of training it again. After recording, the file names the run it went into.

A file that cannot be read, or that belongs to another cell id, is ignored (the cell is trained).
To train a recorded cell again, delete its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suite.runner.outcome import NOT_STARTED, UNRECORDED, CellOutcome, cell_tags, numeric
from suite.tracking.faults import StoreFault

if TYPE_CHECKING:
    from suite.runner.plan import PlannedCell
    from suite.tracking import Tracker

SAVED_NAME = "summary.json"


def write_saved(
    folder: Path, record: dict[str, Any], history: Iterable[tuple[int, dict[str, float]]]
) -> Path:
    """Write ``record`` with its ``history`` to ``folder/summary.json`` (temporary file, then
    rename: a reader never sees half a file); the path."""
    path = Path(folder) / SAVED_NAME
    blob = {**record, "history": [[int(step), dict(values)] for step, values in history]}
    fd, tmp = tempfile.mkstemp(prefix=SAVED_NAME + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(blob, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_saved(folder: Path, cell_id: str) -> dict[str, Any] | None:
    """The saved result of cell ``cell_id`` in ``folder`` (with ``history`` as
    ``[(step, values)]``), or None when there is none usable (module docstring)."""
    path = Path(folder) / SAVED_NAME
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(blob, dict) or blob.get("cell_id") != cell_id:
        return None
    if not isinstance(blob.get("metrics"), dict):
        return None
    history = blob.get("history") or []
    try:
        blob["history"] = [(int(step), dict(values)) for step, values in history]
    except (TypeError, ValueError):
        return None
    return blob


def record_saved(
    planned: PlannedCell, tracker: Tracker, folder: Path, saved: dict[str, Any]
) -> CellOutcome:
    """Record a cell from the ``summary.json`` an earlier run saved: a new run (the one left
    RUNNING is ended KILLED by ``start_cell``) with the streamed history, the final metrics and
    the artifact; nothing is trained."""
    cell, path = planned.cell, folder / SAVED_NAME
    tags = {**cell_tags(cell, folder), "suite.recorded_from": str(path)}
    if saved.get("device"):
        tags["suite.device"] = str(saved["device"])
    try:
        run = tracker.start_cell(cell, extra_tags=tags)
    except StoreFault as fault:
        return CellOutcome(planned, NOT_STARTED, str(fault), fault=fault, saved=path)
    metrics, history = saved["metrics"], saved.pop("history")
    record = {**saved, "run_id": run.run_id}
    try:
        for step, values in history:
            run.queue_metrics(numeric(values), step=step)
        run.log_metrics(numeric(metrics), step=int(metrics.get("train/steps", 0) or 0))
        run.log_dict(record, "summary.json")
        run.finish("FINISHED")
    except StoreFault as fault:
        reason = f"trained, but not recorded: {fault}"
        return CellOutcome(planned, UNRECORDED, reason, metrics, run.run_id, None, fault, path)
    except Exception as exc:  # a saved file this runner cannot log (edited by hand?)
        reason = f"recording {path} failed: {type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            run.finish("FAILED", reason)
        return CellOutcome(planned, "FAILED", reason, {}, run.run_id)
    with contextlib.suppress(OSError):
        write_saved(folder, record, history)  # now names the run it was recorded in
    note = f"recorded from {path} (trained by an earlier run)"
    return CellOutcome(planned, "FINISHED", note, metrics, run.run_id, folder / "log.txt")
