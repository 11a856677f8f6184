"""One MLflow experiment per experiment file, one MLflow run per cell.

Reruns and stale runs. The cell id (tag ``suite.cell_id``) links a cell to its runs; a cell is
done when it has a FINISHED run (:meth:`Tracker.finished_cell_ids`, which the runner skips).
:meth:`Tracker.start_cell` always opens a fresh run; any run of the same cell still RUNNING at that
moment is presumed left behind by a killed process (shards partition the cells, so no two live
processes run one cell) and is ended KILLED, with ``suite.failure`` saying so and
``suite.superseded_by`` naming the new run. Old FAILED/KILLED runs stay as history, so after a
kill and a rerun the cell has exactly one FINISHED run.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from suite.cell import EVAL_BN_STATISTICS
from suite.tracking.env import environment_tags
from suite.tracking.faults import StoreFault
from suite.tracking.run import FAILURE_TAG, MAX_TAG_CHARS, CellRun, param_value
from suite.tracking.store import open_client, quote, search_all, with_retry
from suite.tracking.uri import TrackingError, sqlite_path

if TYPE_CHECKING:
    from suite.cell import CellConfig

CELL_TAG = "suite.cell_id"
EXPERIMENT_TAG = "suite.experiment"
ARTIFACT_ROOT_ENV = "BNSUITE_ARTIFACT_ROOT"


def run_name(cell: CellConfig) -> str:
    """``"<method> s=<student_bn> t=<teacher_bn> b=<batch> d=<devices> seed=<seed>"``."""
    return (
        f"{cell.method.name} s={cell.student_bn} t={cell.teacher_bn} b={cell.batch_size} "
        f"d={cell.devices} seed={cell.seed}"
    )


def default_artifact_root(uri: str, workdir: str | os.PathLike[str] | None = None) -> str | None:
    """Where the artifacts of a new experiment at ``uri`` go — the first rule that applies:

    1. ``$BNSUITE_ARTIFACT_ROOT``;
    2. a SQLite store: ``<folder of the database>/mlruns``, beside the store they are recorded in;
    3. a tracking server (http, https, databricks): None — the server's own artifact store;
    4. any other database (postgresql, mysql …): ``<workdir>/mlruns`` when ``workdir`` is given,
       else None (MLflow's default, ``./mlruns`` in the working directory).

    Never the working directory merely because the command was started there.
    """
    root = os.environ.get(ARTIFACT_ROOT_ENV)
    if root:
        return root
    path = sqlite_path(uri)
    if path is not None:
        return str(path.absolute().parent / "mlruns")
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https", "databricks") or workdir is None:
        return None
    return str(Path(workdir).absolute() / "mlruns")


def artifact_location(experiment: str, root: str | None) -> str | None:
    """``<root>/<experiment>`` as a file URI (the experiment name with characters other than
    letters, digits, ``.``, ``-``, ``_`` replaced); ``None`` when ``root`` is None. A root that
    already is a URI (``s3://…``) is joined with '/'."""
    if not root:
        return None
    safe = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    if re.match(r"^[a-zA-Z][\w+.-]*://", root):
        return f"{root.rstrip('/')}/{safe}"
    return (Path(root).expanduser().resolve() / safe).as_uri()


class Tracker:
    """Get-or-create the MLflow experiment ``experiment`` at ``uri`` and open cell runs in it.

    Artifacts go to ``<root>/<experiment>`` with root = ``artifact_root`` if given, else
    :func:`default_artifact_root` of ``uri`` and ``workdir`` (beside a SQLite store). The
    location applies when this call creates the experiment; an existing experiment keeps its
    own. Two processes creating the experiment at once both end up with the same experiment id.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_root: str | None = None,
        *,
        workdir: str | os.PathLike[str] | None = None,
        flush_every_s: float = 5.0,
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.flush_every_s = flush_every_s
        self._client = open_client(uri)
        root = artifact_root or default_artifact_root(uri, workdir)
        self.experiment_id = self._get_or_create(artifact_location(experiment, root))

    def _get_or_create(self, location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        exp = with_retry(client.get_experiment_by_name, self.experiment)
        if exp is None:
            try:
                return with_retry(
                    client.create_experiment, self.experiment, artifact_location=location
                )
            except MlflowException as exc:
                if "already exists" not in str(exc) and exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            exp = with_retry(client.get_experiment_by_name, self.experiment)
        if exp.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} (id {exp.experiment_id}) at {self.uri} is "
                f"deleted; restore it (`mlflow experiments restore --experiment-id "
                f"{exp.experiment_id}`) or purge it (`mlflow gc --backend-store-uri {self.uri}`)"
            )
        return exp.experiment_id

    def finished_cell_ids(self) -> set[str]:
        """Ids of the cells that have at least one FINISHED run."""
        runs = search_all(self._client, self.experiment_id, "attributes.status = 'FINISHED'")
        return {r.data.tags[CELL_TAG] for r in runs if CELL_TAG in r.data.tags}

    def start_cell(self, cell: CellConfig, *, extra_tags: dict[str, str] | None = None) -> CellRun:
        """Open a RUNNING run for ``cell``: tags (cell id, versions, commit, device, host;
        ``extra_tags`` override them), params ``cell.flat()``, artifacts ``config.json`` and
        ``config.yaml``. Stale RUNNING runs of the cell are ended KILLED (module docstring)."""
        from mlflow.entities import Param

        cell_id = cell.cell_id
        stale = search_all(
            self._client,
            self.experiment_id,
            f"tags.`{CELL_TAG}` = {quote(cell_id)} and attributes.status = 'RUNNING'",
        )
        tags = {
            **environment_tags(),
            CELL_TAG: cell_id,
            EXPERIMENT_TAG: self.experiment,
            "suite.method": cell.method.name,
            "suite.pid": str(os.getpid()),
            **(extra_tags or {}),
        }
        info = with_retry(
            self._client.create_run,
            self.experiment_id,
            tags={k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()},
            run_name=run_name(cell),
        ).info
        run = CellRun(self._client, info.run_id, cell_id, flush_every_s=self.flush_every_s)
        try:
            params = [Param(k, param_value(v)) for k, v in cell.flat().items()]
            # which BN statistics the evaluated encoder uses (device 0's, as rank 0 saves them)
            params.append(Param("eval.bn_statistics", EVAL_BN_STATISTICS))
            for i in range(0, len(params), 100):  # MLflow: at most 100 params per log_batch
                with_retry(self._client.log_batch, info.run_id, params=params[i : i + 100])
            for old in stale:
                self._end_stale(old.info.run_id, info.run_id)
            run.log_dict(cell.to_dict(), "config.json")
            run.log_dict(cell.to_dict(), "config.yaml")
        except StoreFault:
            raise  # ending the run would fail the same way; the next start_cell ends it KILLED
        except BaseException as exc:
            run.finish("FAILED", f"the run could not be set up: {type(exc).__name__}: {exc}")
            raise
        return run

    def _end_stale(self, run_id: str, new_run_id: str) -> None:
        stale = CellRun(self._client, run_id, "")
        stale.set_tags({"suite.superseded_by": new_run_id})
        reason = f"stale: still RUNNING when the cell was started again (run {new_run_id})"
        stale.finish("KILLED", reason)

    def __repr__(self) -> str:
        return f"Tracker(uri={self.uri!r}, experiment={self.experiment!r}, id={self.experiment_id})"


__all__ = [
    "CELL_TAG",
    "FAILURE_TAG",
    "CellRun",
    "Tracker",
    "artifact_location",
    "default_artifact_root",
    "run_name",
]
