"""MLflow tracking: one MLflow experiment per experiment file, one MLflow run per cell.

``import suite.tracking`` is cheap: MLflow is imported inside the functions that talk to a store.

    uri = resolve_tracking_uri(args.tracking_uri)   # flag > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db
    check_tracking(uri)                             # TrackingError before any training
    tracker = Tracker(uri, experiment.name)         # artifacts beside a SQLite store
    todo = [c for c in cells if c.cell_id not in tracker.finished_cell_ids()]
    with tracker.start_cell(cell) as run:           # exception → FAILED + suite.failure, re-raised
        run.log_metrics({"train/loss": 1.2}, step=10)
        run.log_dict(summary, "summary.json")
    rows = read_runs(uri, experiment.name)          # FINISHED runs as dicts; read-only

Several processes may share one SQLite store: writes are batched and retried while the database
is locked, and the first open of a new database is serialised (``suite.tracking.store``).
"""

from suite.tracking.reader import latest_per_cell, lookup, metric_history, read_runs, to_table
from suite.tracking.run import FAILURE_TAG, CellRun
from suite.tracking.tracker import CELL_TAG, Tracker, run_name
from suite.tracking.uri import TrackingError, check_tracking, resolve_tracking_uri

__all__ = [
    "CELL_TAG",
    "FAILURE_TAG",
    "CellRun",
    "Tracker",
    "TrackingError",
    "check_tracking",
    "latest_per_cell",
    "lookup",
    "metric_history",
    "read_runs",
    "resolve_tracking_uri",
    "run_name",
    "to_table",
]
