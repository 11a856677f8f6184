"""Where the MLflow runs go: resolving the tracking URI and failing fast when it is unusable.

Resolution rule (first that applies)::

    --tracking-uri FLAG  >  $MLFLOW_TRACKING_URI  >  sqlite:///<cwd>/mlflow.db

A relative SQLite path (``sqlite:///runs/mlflow.db``) is made absolute against the working
directory, so every process of one invocation (shards, torchrun ranks) agrees on one file.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_DB = "mlflow.db"
SERVER_HINT = "mlflow server --backend-store-uri sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store is unusable: server unreachable, folder unwritable, experiment deleted."""


def _scheme(uri: str) -> str:
    return urllib.parse.urlparse(uri).scheme.lower()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite://`` URI, or ``None`` for other schemes and in-memory DBs.

    ``sqlite:///rel.db`` → ``rel.db`` (relative); ``sqlite:////abs/x.db`` → ``/abs/x.db``;
    a ``?query`` suffix is dropped.
    """
    if not _scheme(uri).startswith("sqlite"):
        return None
    _, _, rest = uri.partition("://")
    if not rest.startswith("/"):  # "sqlite://" alone: in-memory
        return None
    path = rest[1:].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(urllib.parse.unquote(path))


def _absolute_sqlite(uri: str) -> str:
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    scheme, _, rest = uri.partition("://")
    query = rest.partition("?")[2]
    return f"{scheme}:///{Path.cwd() / path}" + (f"?{query}" if query else "")


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """``cli_uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"
    return _absolute_sqlite(uri)


def _check_server(uri: str, timeout_s: float) -> None:
    """GET ``<uri>/health`` (MLflow's liveness endpoint): 2xx/3xx, or 401/403 behind auth, or a
    TLS handshake (MLflow's own TLS settings apply later) pass; no answer or any other HTTP
    status (404: not an MLflow server; 502: its proxy has no backend) is a TrackingError."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310 (http/https only)
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return
        reason = f"GET {url} answered HTTP {exc.code}; is it an MLflow server?"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return
    parsed = urllib.parse.urlparse(uri)
    raise TrackingError(
        f"MLflow tracking server {uri} is unreachable ({reason}). Start one with "
        f"`{SERVER_HINT} --host {parsed.hostname} --port {parsed.port or 5000}`, or pass "
        "--tracking-uri / set MLFLOW_TRACKING_URI to a reachable server (unset both to use "
        "the embedded sqlite:///mlflow.db in the working directory)."
    )


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_sqlite(uri: str, path: Path, *, write: bool) -> None:
    """The database must not be a folder; to write, the closest existing ancestor of its folder
    must be a folder that accepts a new file (probed with a temporary file, removed at once).
    Nothing is created: MLflow creates the folders and the file when the store is first opened
    for writing."""
    path = path.absolute()
    if path.is_dir():
        raise TrackingError(
            f"tracking URI {uri}: {path} is a folder, not a SQLite database file; name a file "
            f"in it, e.g. --tracking-uri sqlite:///{path / DEFAULT_DB}"
        )
    if not write:
        return  # a missing file means "no runs yet"; a read-only one is fine to read
    folder = _nearest_existing(path.parent)
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bnsuite-probe-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:
        raise TrackingError(
            f"tracking URI {uri}: the SQLite folder {path.parent} is not writable ({exc}). "
            "Choose another --tracking-uri (e.g. sqlite:///$HOME/mlflow.db) or fix the "
            "permissions."
        ) from exc


def check_tracking(uri: str, *, timeout_s: float = 3.0, write: bool = True) -> None:
    """Fail fast, before any training, when runs could not be recorded (``write``) or read at
    ``uri``; creates nothing.

    http(s): the server answers within ``timeout_s``; sqlite: the path is not a folder and, to
    write, its folder (or the closest existing ancestor) accepts a new file — to read, a missing
    file is fine (no runs yet) and so is a read-only one; file or a bare path: refused (MLflow
    >= 3 rejects the file store unless MLFLOW_ALLOW_FILE_STORE=true). Other schemes
    (postgresql, mysql, databricks) are left to MLflow.
    """
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme.startswith("sqlite"):
        path = sqlite_path(uri)
        if path is not None:
            _check_sqlite(uri, path, write=write)
    elif scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in (
        "1",
        "true",
    ):
        raise TrackingError(
            f"tracking URI {uri} is an MLflow file store, which MLflow >= 3 refuses; use a "
            "database, e.g. --tracking-uri sqlite:///mlflow.db "
            "(or set MLFLOW_ALLOW_FILE_STORE=true)."
        )
