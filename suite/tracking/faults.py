"""When the tracking store stops answering mid-run: which errors are store faults, how long the
runner's own calls retry them, and the message the user reads.

Two faults end a runner's recording, whatever call meets them first:

* **unreachable** — an HTTP tracking server that refuses connections, times out or drops them
  (MLflow's ``Max retries exceeded``, ``Connection refused``, ``timed out``);
* **disk full** — a store whose filesystem is full (SQLite's ``database or disk is full``, an
  ``OSError`` ENOSPC/EDQUOT anywhere in the exception chain).

Retry budget. MLflow retries each HTTP call 7 times with exponential back-off (about 4 minutes,
and a 120 s timeout per attempt). Inside :func:`retry_budget` — the runner's calls — MLflow's own
retries are off and each attempt times out after at most 10 s; ``store.with_retry`` repeats an
unreachable call with back-off for at most the budget (:data:`DEFAULT_RETRY_BUDGET_S` seconds, or
``$BNSUITE_TRACKING_RETRY_S``), then raises :class:`StoreFault`.
Environment variables the user set (``MLFLOW_HTTP_REQUEST_*``) are left as they are.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from suite import disk
from suite.tracking.uri import TrackingError, sqlite_path

UNREACHABLE = "unreachable"
DISK_FULL = "disk full"
RETRY_BUDGET_ENV = "BNSUITE_TRACKING_RETRY_S"
DEFAULT_RETRY_BUDGET_S = 30.0
ATTEMPT_TIMEOUT_S = 10
_FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")
_UNREACHABLE_TEXT = (
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "timed out",
)
_budget_s: float | None = None  # None: outside retry_budget (no unreachable retries here)


def fault_kind(exc: BaseException) -> str | None:
    """:data:`DISK_FULL`, :data:`UNREACHABLE` or None for ``exc`` and its cause/context chain."""
    if isinstance(exc, StoreFault):
        return exc.kind
    if disk.is_full_error(exc):
        return DISK_FULL
    texts = [str(link).lower() for link in disk.exception_chain(exc)]
    if any(t in text for text in texts for t in _FULL_TEXT):
        return DISK_FULL
    if any(t in text for text in texts for t in _UNREACHABLE_TEXT):
        return UNREACHABLE
    return None


def budget_s() -> float | None:
    """The seconds an unreachable call is retried for (None outside :func:`retry_budget`)."""
    return _budget_s


def _configured_budget() -> float:
    raw = os.environ.get(RETRY_BUDGET_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_RETRY_BUDGET_S
    except ValueError:
        value = DEFAULT_RETRY_BUDGET_S
    return max(0.0, value)


@contextlib.contextmanager
def retry_budget(seconds: float | None = None) -> Iterator[float]:
    """Bound every tracking call inside the block to about ``seconds`` (module docstring)."""
    global _budget_s
    budget = _configured_budget() if seconds is None else seconds
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, min(ATTEMPT_TIMEOUT_S, int(budget) or 1))),
    }
    added = [k for k in settings if k not in os.environ]
    previous = _budget_s
    for key in added:
        os.environ[key] = settings[key]
    _budget_s = budget
    try:
        yield budget
    finally:
        _budget_s = previous
        for key in added:
            os.environ.pop(key, None)


class StoreFault(TrackingError):
    """The store stopped answering (``kind``: unreachable or disk full) at wall time ``since``."""

    def __init__(self, kind: str, since: float, detail: str) -> None:
        self.kind, self.since, self.detail = kind, since, detail
        super().__init__(f"tracking store {kind} since {_clock(since)} ({detail})")

    def describe(self, uri: str) -> str:
        """``tracking server http://… unreachable since 02:13:05`` or ``tracking store
        sqlite:///… disk full since 02:13:05 (12 KiB free of 1 MiB in /folder)``."""
        if self.kind == UNREACHABLE:
            return f"tracking server {uri} {self.kind} since {_clock(self.since)}"
        path = sqlite_path(uri)
        folder = path.absolute().parent
        where = f" ({disk.free_space(folder)} in {folder})" if path is not None else ""
        return f"tracking store {uri} {self.kind} since {_clock(self.since)}{where}"


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def as_fault(exc: BaseException, since: float) -> StoreFault | None:
    """``exc`` as a :class:`StoreFault` (first failure at ``since``), or None when it is not one."""
    if isinstance(exc, StoreFault):
        return exc
    kind = fault_kind(exc)
    if kind is None:
        return None
    words = _FULL_TEXT if kind == DISK_FULL else _UNREACHABLE_TEXT
    lines = [line.strip() for link in disk.exception_chain(exc) for line in str(link).splitlines()]
    telling = [line for line in lines if any(w in line.lower() for w in words)]
    detail = (telling or [line for line in lines if line] or [type(exc).__name__])[0]
    return StoreFault(kind, since, detail[:300])
