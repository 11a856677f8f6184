"""A trained cell's result kept in its own folder until the tracking store has it.

``<workdir>/<experiment>/<cell_id>/summary.json`` is written (atomically) by the runner as soon as
the cell's process reports its result, before any of that result is logged: the ``summary.json``
artifact (:func:`suite.runner.execute.summary`) plus ``history``, every metrics event the cell
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
from typing import Any

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
