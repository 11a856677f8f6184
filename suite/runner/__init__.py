"""The matrix runner: ``bnsuite plan`` and ``bnsuite run`` over the cells of an experiment file.

>>> from suite.runner import load_plan, prepare, run_plan, render_summary
>>> plan = load_plan("experiments/ci.yaml")          # ConfigError / TrackingError
>>> tracker = prepare(plan, "auto")                   # DataError / PreflightError; no training yet
>>> report = run_plan(plan, tracker, workdir="runs")  # each pending cell in its own process
>>> print(render_summary(report)); report.exit_code   # 0, or 1 when a cell failed

Importing this package is cheap (no torch, no MLflow); the modules:

- ``plan``     cells, ids, varying axes, done/pending (``build_plan``, ``render_plan``);
- ``shard``    ``--shard K/N`` (1-based, round robin over the expanded order);
- ``run``      the checks before training and the loop over pending cells;
- ``execute``  one cell: lock, MLflow run, child process, recording (who records what);
- ``child``    the cell's process (``python -m suite.runner.child``);
- ``launch``   its command line (torchrun for ``nproc > 1``), environment, dying with the runner;
- ``protocol`` the event lines between the two; ``progress`` bars and tables; ``lock`` the lock.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module; imported on first use, so that ``python -m suite.runner.child`` (which imports
# this package first) does not import itself twice.
_EXPORTS = {
    "CellOutcome": "execute",
    "Plan": "plan",
    "PlannedCell": "plan",
    "build_plan": "plan",
    "cell_folder": "plan",
    "render_plan": "plan",
    "DEFAULT_WORKDIR": "run",
    "PreflightError": "run",
    "RunReport": "run",
    "load_plan": "run",
    "prepare": "run",
    "render_failures": "run",
    "render_summary": "run",
    "run_plan": "run",
    "Shard": "shard",
    "parse_shard": "shard",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'suite.runner' has no attribute {name!r}")
    return getattr(importlib.import_module(f"suite.runner.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
