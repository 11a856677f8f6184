"""Talking to the MLflow store safely from several processes at once.

Matrix shards on one host may share one SQLite file. Two things can go wrong there:

* a write finds the database locked by another process (SQLite allows one writer at a time and
  gives up after its 5 s busy timeout) → :func:`with_retry` repeats the call with exponential
  back-off and jitter, ``delay_k = min(2 s, 0.05 s * 2**k) * U(0.5, 1.5)``, for up to 120 s;
* two processes open a brand-new database and both run MLflow's schema migrations →
  :func:`open_client` serialises opening the store with an exclusive POSIX ``flock`` on the
  database's folder (after the slow imports, so only the schema check/migration is serial).

A retried call either committed nothing (the lock error aborts its transaction) or is idempotent.
A store that stops answering (a server unreachable, a full disk) is raised by :func:`with_retry` as
:class:`suite.tracking.faults.StoreFault`; inside :func:`suite.tracking.faults.retry_budget` (the
runner) an unreachable server is retried for that budget in seconds first.

Reading (:func:`open_reader`, for ``plan``, ``check`` and ``report``) never writes: a SQLite store
that does not exist is "no runs yet" (nothing is created), and an existing one is opened through
SQLite's read-only mode (``file:…?mode=ro``), so a store in a read-only folder or a read-only copy
can be inspected. A SQLite path that is a folder fails at once (MLflow would retry for minutes).
MLflow's INFO chatter while a store is opened ("Creating initial MLflow database tables") is kept
out of the user's terminal; its warnings still show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from suite.tracking import faults
from suite.tracking.uri import TrackingError, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

T = TypeVar("T")
LOCKED = "database is locked"
RETRY_DEADLINE_S = 120.0
_log = logging.getLogger(__name__)


def is_locked_error(exc: BaseException) -> bool:
    """True when ``exc`` or an exception in its cause/context chain says the DB is locked."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if LOCKED in str(cur).lower():
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def with_retry(
    fn: Callable[..., T], *args: Any, deadline_s: float = RETRY_DEADLINE_S, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)``, repeated while it fails with "database is locked" (see module),
    and, inside :func:`suite.tracking.faults.retry_budget`, while the store is unreachable for at
    most that budget. A store fault (unreachable, disk full) is raised as
    :class:`~suite.tracking.faults.StoreFault`, which remembers when the first attempt failed."""
    start = time.monotonic()
    first_failure: float | None = None
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            elapsed = time.monotonic() - start
            first_failure = first_failure or time.time()
            if is_locked_error(exc) and elapsed <= deadline_s:
                delay = min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5)
                _log.debug("%s: database is locked, retry %d in %.2f s", fn, attempt + 1, delay)
            elif (
                faults.fault_kind(exc) == faults.UNREACHABLE
                and (budget := faults.budget_s()) is not None
                and elapsed < budget
            ):
                delay = min(5.0, 0.5 * 2**attempt, max(budget - elapsed, 0.0))
                _log.debug("%s: store unreachable, retry %d in %.2f s", fn, attempt + 1, delay)
            else:
                fault = faults.as_fault(exc, first_failure)
                if fault is None or fault is exc:
                    raise
                raise fault from exc
            time.sleep(delay)
            attempt += 1


@contextlib.contextmanager
def _init_lock(uri: str, wait_s: float = RETRY_DEADLINE_S) -> Iterator[None]:
    """Exclusive ``flock`` on the SQLite file's folder while a store is opened (no lock file is
    left behind); a no-op for other stores, without ``fcntl`` (Windows) or an unusable folder."""
    path = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    fd = None
    if path is not None and fcntl is not None:
        folder = path.absolute().parent
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY)
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + wait_s
        locked = False
        while not locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    _log.warning("%s locked for %.0f s; opening without the lock", path, wait_s)
                    break
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the named loggers to ``level`` inside the block (their previous levels are restored):
    library INFO lines stay out of the user's terminal, warnings and errors do not."""
    loggers = [logging.getLogger(name) for name in names]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, previous, strict=True):
            lg.setLevel(old)


def _refuse_folder(uri: str) -> None:
    """TrackingError at once when the SQLite path of ``uri`` is a folder."""
    path = sqlite_path(uri)
    if path is not None and path.is_dir():
        raise TrackingError(
            f"tracking URI {uri}: {path.absolute()} is a folder, not a SQLite database file; "
            f"name a file in it, e.g. sqlite:///{path.absolute() / 'mlflow.db'}"
        )


def open_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``uri`` whose store (and schema) exists, created when missing;
    errors → TrackingError."""
    _refuse_folder(uri)  # before the (slow) MLflow import: fail at once
    from mlflow import MlflowClient

    if sqlite_path(uri) is not None:
        # importing the SQL store takes seconds: do it before the lock, in parallel
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    with _init_lock(uri), quiet("mlflow", "alembic"):
        try:
            return with_retry(MlflowClient, tracking_uri=uri)
        except Exception as exc:
            raise TrackingError(f"cannot open the MLflow tracking store {uri}: {exc}") from exc


def read_only_uri(path: os.PathLike[str] | str) -> str:
    """The SQLAlchemy URI that opens the SQLite file ``path`` through SQLite's read-only mode."""
    absolute = urllib.parse.quote(str(Path(path).absolute()))
    return f"sqlite:///file:{absolute}?mode=ro&uri=true"


def _read_only_sqlite_client(path: Path) -> MlflowClient:
    """An ``MlflowClient`` whose engine opens ``path`` read-only (SQLite ``mode=ro``).

    The engine is made here and registered in MLflow's engine cache under its URI, so that MLflow
    neither creates folders from the path (it would read ``file:/…`` as a relative folder) nor
    retries the connection for minutes; any write through it fails ("attempt to write a readonly
    database").
    """
    from mlflow import MlflowClient
    from mlflow.store.db.utils import create_sqlalchemy_engine
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = read_only_uri(path)
    engines = getattr(SqlAlchemyStore, "_engine_map", None)
    if isinstance(engines, dict) and uri not in engines:
        engines[uri] = create_sqlalchemy_engine(uri)
    return MlflowClient(tracking_uri=uri)


def open_reader(uri: str) -> MlflowClient | None:
    """A client that only reads ``uri`` (module docstring); None for a SQLite store that does not
    exist yet or is an empty file (no runs). Errors → TrackingError."""
    _refuse_folder(uri)
    path = sqlite_path(uri)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        return None
    try:
        with quiet("mlflow", "alembic"):
            if path is not None:
                return _read_only_sqlite_client(path)
            from mlflow import MlflowClient

            return with_retry(MlflowClient, tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(f"cannot read the MLflow tracking store {uri}: {exc}") from exc


def search_all(
    client: MlflowClient,
    experiment_id: str,
    filter_string: str = "",
    order_by: list[str] | None = None,
) -> list[Run]:
    """Every active run of one experiment matching ``filter_string`` (all result pages)."""
    runs: list[Run] = []
    token = None
    while True:
        page = with_retry(
            client.search_runs,
            [experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def quote(value: str) -> str:
    """A string literal for an MLflow search filter: ``'it''s'``-style quoting is not supported,
    so single quotes are refused (cell ids and statuses never contain them)."""
    if "'" in value:
        raise ValueError(f"search value {value!r} contains a single quote")
    return f"'{value}'"
