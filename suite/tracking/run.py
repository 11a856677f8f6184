"""One MLflow run = one cell: metrics, artifacts and the final status."""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import re
import tempfile
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from suite.tracking.faults import StoreFault
from suite.tracking.store import with_retry

if TYPE_CHECKING:
    from mlflow import MlflowClient

FAILURE_TAG = "suite.failure"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PER_BATCH = 1000  # MLflow: at most 1000 metrics per log_batch
MAX_TAG_CHARS = 5000  # MLflow allows 8000 per tag value
_METRIC_NAME = re.compile(r"^[/\w.\- :]+$")
_log = logging.getLogger(__name__)


def check_metric_name(name: str) -> str:
    """MLflow's rule: alphanumerics, ``_ - . : /`` and spaces, and a normalised relative path."""
    valid = isinstance(name, str) and _METRIC_NAME.match(name) is not None
    if not valid or posixpath.normpath(name) != name or name == "." or name.startswith(("/", "..")):
        raise ValueError(
            f"metric name {name!r} is invalid: use letters, digits, '_', '-', '.', ':', ' ' and "
            "'/', as a relative path without '..' or '//' (e.g. 'knn/top1')"
        )
    return name


class CellRun:
    """The MLflow run of one cell; also a context manager.

    ``with tracker.start_cell(cell) as run:`` ends the run FINISHED on a normal exit, FAILED with
    ``suite.failure = "<ExceptionType>: <message>"`` (and ``traceback.txt``) on an exception, and
    KILLED on KeyboardInterrupt/SystemExit; the exception is re-raised.

    Metrics are buffered and written with one ``log_batch`` when ``flush_every_s`` seconds passed
    since the last write, when 1000 are pending, on :meth:`flush` and on :meth:`finish`.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, cell_id: str, *, flush_every_s: float = 5.0
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.cell_id = cell_id
        self.flush_every_s = flush_every_s
        self.status = "RUNNING"
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    @property
    def artifact_uri(self) -> str:
        return with_retry(self._client.get_run, self.run_id).info.artifact_uri

    # -- metrics and tags ----------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Queue ``metrics`` at ``step`` (0 when None); None values are skipped, NaN/inf kept;
        write the queue when it is due (class docstring)."""
        self.queue_metrics(metrics, step)
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if len(self._pending) >= MAX_PER_BATCH or due:
            self.flush()

    def queue_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Queue ``metrics`` at ``step`` without writing: while the store is unreachable, the
        queue keeps them for the next :meth:`flush`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metric {key!r}: value {value!r} is not a number") from exc
            self._pending.append(Metric(check_metric_name(key), number, now, int(step or 0)))

    def flush(self) -> None:
        """Write the queued metrics (chunks of 1000 per ``log_batch``)."""
        while self._pending:
            chunk = self._pending[:MAX_PER_BATCH]
            with_retry(self._client.log_batch, self.run_id, metrics=chunk)
            del self._pending[:MAX_PER_BATCH]
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags in one ``log_batch`` (values as strings, cut to 5000 characters)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            with_retry(self._client.log_batch, self.run_id, tags=items[i : i + 100])

    # -- artifacts -----------------------------------------------------------------------------
    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        """Store ``obj`` as the artifact ``name``: YAML for ``.yaml``/``.yml``, else indented JSON
        (non-JSON values such as paths are written with ``str``)."""
        if name.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False)
        else:
            text = json.dumps(obj, indent=2, default=str)
        self.log_text(text, name)

    def log_text(self, text: str, name: str) -> None:
        """Store ``text`` as the artifact ``name`` (may contain '/', e.g. ``eval/knn.txt``)."""
        folder, base = posixpath.split(name)
        with tempfile.TemporaryDirectory(prefix="bnsuite-artifact-") as tmp:
            path = Path(tmp) / base
            path.write_text(text)
            self.log_artifact(path, folder or None)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy the file or folder ``path`` into the run's artifacts (under ``artifact_path``)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        if path.is_dir():
            with_retry(self._client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            with_retry(self._client.log_artifact, self.run_id, str(path), artifact_path)

    # -- end -----------------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Flush and end the run with ``status``; ``reason`` is recorded as tag ``suite.failure``.

        A second call is a no-op. If the pending metrics cannot be written the run ends FAILED.
        """
        if self.status != "RUNNING":
            return
        if status not in END_STATUSES:
            raise ValueError(f"run status {status!r} is invalid; valid: {', '.join(END_STATUSES)}")
        try:
            self.flush()
        except StoreFault:
            raise  # the store is gone: ending the run would fail the same way
        except Exception as exc:
            self._end("FAILED", f"metrics could not be logged: {exc}")
            raise
        self._end(status, reason)

    def _end(self, status: str, reason: str | None) -> None:
        if reason:
            self.set_tags({FAILURE_TAG: reason})
        with_retry(self._client.set_terminated, self.run_id, status=status)
        self.status = status

    def __enter__(self) -> CellRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self.finish()
            return False
        if self.status != "RUNNING":  # ended inside the block already
            return False
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        # the cell's own exception matters more than its traceback artifact
        with contextlib.suppress(Exception):
            self.log_text("".join(traceback.format_exception(exc_type, exc, tb)), "traceback.txt")
        try:
            self.finish(status, f"{type(exc).__name__}: {exc}")
        except Exception as end_exc:  # do not mask the cell's own exception
            _log.warning("run %s could not be ended as %s: %s", self.run_id, status, end_exc)
        return False


def param_value(value: Any) -> str:
    """An MLflow param value: ``str(value)`` (None → "None"), at most 6000 characters."""
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
