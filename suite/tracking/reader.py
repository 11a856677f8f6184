"""Reading cell runs back, for ``bnsuite plan``, ``check`` and ``report`` (no pandas needed).

Reading never writes (:func:`suite.tracking.store.open_reader`): a SQLite store that does not
exist gives ``[]`` and is not created; a store in a read-only folder, or a read-only file, is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from suite.tracking.store import open_reader, quote, search_all, with_retry
from suite.tracking.tracker import CELL_TAG, EXPERIMENT_TAG
from suite.tracking.uri import TrackingError

if TYPE_CHECKING:
    from mlflow.entities import Run

RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_SECTIONS = ("params", "metrics", "tags")


def _row(run: Run) -> dict[str, Any]:
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "cell_id": data.tags.get(CELL_TAG),
        "experiment": data.tags.get(EXPERIMENT_TAG),
        "params": dict(data.params),
        "metrics": dict(data.metrics),
        "tags": dict(data.tags),
        "start_time": info.start_time,
        "end_time": info.end_time,
        "artifact_uri": info.artifact_uri,
    }


def read_runs(
    uri: str, experiment: str, *, status: str | None = "FINISHED"
) -> list[dict[str, Any]]:
    """One dict per run of ``experiment`` (oldest first), only those with ``status`` unless None.

    Keys: ``run_id, run_name, status, cell_id, experiment, params`` (dotted keys, string values as
    logged), ``metrics`` (last value of each), ``tags, start_time, end_time`` (ms since the epoch;
    ``end_time`` None while running) and ``artifact_uri``. A missing experiment, or a SQLite
    store that does not exist, gives ``[]``; nothing is written (module docstring).
    """
    if status is not None and status not in RUN_STATUSES:
        valid = ", ".join(RUN_STATUSES)
        raise ValueError(f"run status {status!r} is invalid; valid: {valid} or None")
    where = f"attributes.status = {quote(status)}" if status else ""
    client = open_reader(uri)
    if client is None:
        return []
    try:
        exp = with_retry(client.get_experiment_by_name, experiment)
        if exp is None:
            return []
        runs = search_all(client, exp.experiment_id, where, order_by=["attributes.start_time ASC"])
    except Exception as exc:
        raise TrackingError(f"cannot read the MLflow tracking store {uri}: {exc}") from exc
    return [_row(r) for r in runs]


def latest_per_cell(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most recently started row of each cell id (rows without a cell id are dropped)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        cid = row["cell_id"]
        if cid and (cid not in latest or row["start_time"] >= latest[cid]["start_time"]):
            latest[cid] = row
    return list(latest.values())


def lookup(row: dict[str, Any], column: str) -> Any:
    """``row[column]``, where ``params.<key>``, ``metrics.<key>`` and ``tags.<key>`` look inside
    the section (the key may itself contain dots or slashes); missing → None."""
    section, _, key = column.partition(".")
    if section in _SECTIONS and key:
        return row.get(section, {}).get(key)
    return row.get(column)


def to_table(rows: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    """``[[lookup(row, c) for c in columns] for row in rows]`` (see :func:`lookup`)."""
    return [[lookup(row, c) for c in columns] for row in rows]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every ``(step, value)`` logged for metric ``key`` of run ``run_id``, ordered by step;
    ``[]`` for a SQLite store that does not exist (nothing is written)."""
    client = open_reader(uri)
    if client is None:
        return []
    history = with_retry(client.get_metric_history, run_id, key)
    return sorted((m.step, m.value) for m in history)
