"""What became of one pending cell in one ``bnsuite run``, and what is recorded of it: the
outcome statuses, the ``summary.json`` artifact, the run tags every cell gets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suite.cell import EVAL_BN_STATISTICS

if TYPE_CHECKING:
    from suite.cell import CellConfig
    from suite.runner.plan import PlannedCell
    from suite.tracking.faults import StoreFault

EVAL_ENCODER_TAG = "suite.eval_encoder"

# outcome statuses besides MLflow's FINISHED / FAILED / KILLED
SKIPPED = "SKIPPED"  # finished by another runner meanwhile
BUSY = "BUSY"  # locked by another live runner
UNRECORDED = "UNRECORDED"  # trained, result in its summary.json; the store stopped answering
NOT_STARTED = "NOT STARTED"  # the store stopped answering before this cell could start


@dataclass
class CellOutcome:
    """What became of one pending cell in this invocation."""

    planned: PlannedCell
    status: str
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    log: Path | None = None
    fault: StoreFault | None = None  # the store stopped answering: the matrix stops here
    saved: Path | None = None  # the cell's result, kept in its folder, not yet recorded


def summary(cell: CellConfig, run_id: str, metrics: dict[str, Any], device: str | None) -> dict:
    """The ``summary.json`` artifact: the metrics with the cell id, the evaluated encoder and the
    evaluation protocol that produced them (the cell's ``eval`` keys, ``encoder`` resolved)."""
    protocol = {
        **dataclasses.asdict(cell.eval),
        "encoder": cell.eval_encoder,
        "bn_statistics": EVAL_BN_STATISTICS,
    }
    return {
        "experiment": cell.experiment,
        "cell_id": cell.cell_id,
        "run_id": run_id,
        "eval_encoder": cell.eval_encoder,
        "protocol": protocol,
        "device": device,
        "metrics": metrics,
    }


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries MLflow can store as metrics (numbers, not booleans)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def cell_tags(cell: CellConfig, folder: Path) -> dict[str, str]:
    """The tags the runner adds to every run of ``cell``: the evaluated encoder, the folder."""
    return {EVAL_ENCODER_TAG: cell.eval_encoder, "suite.workdir": str(folder)}
