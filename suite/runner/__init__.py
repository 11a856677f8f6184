"""The matrix runner: ``bnsuite plan`` and ``bnsuite run`` over the cells of an experiment file.

>>> from suite.runner import load_plan, prepare, run_plan, render_summary
>>> plan = load_plan("experiments/ci.yaml")          # ConfigError / TrackingError
>>> tracker = prepare(plan, "auto")                   # DataError / PreflightError; no training yet
>>> report = run_plan(plan, tracker, workdir="runs")  # each pending cell in its own process
>>> print(render_summary(report)); report.exit_code   # 0, or 1 when a cell failed

Importing this package is cheap (no torch, no MLflow); the modules:

- ``plan``     cells, ids, varying axes, done/pending, ``--shard K/N`` (``build_plan``,
  ``render_plan``, ``parse_shard``);
- ``run``      the checks before training and the loop over pending cells;
- ``execute``  one cell: lock, MLflow run, the cell's process, recording (who records what);
- ``outcome``  what became of a cell in one run (statuses), the ``summary.json`` artifact;
- ``saved``    a trained cell's result kept in its folder until the store has it, and recording
  it from there;
- ``child``    the cell's process (``bnsuite _cell``): its command line and environment, its
  input file, the event lines it writes, what it runs;
- ``progress`` bars and tables; ``lock`` the per-cell lock.
"""

from __future__ import annotations

from suite.runner.execute import CellOutcome
from suite.runner.plan import (
    Plan,
    PlannedCell,
    Shard,
    build_plan,
    cell_folder,
    parse_shard,
    render_plan,
)
from suite.runner.run import (
    DEFAULT_WORKDIR,
    PreflightError,
    RunReport,
    load_plan,
    prepare,
    render_failures,
    render_fault,
    render_summary,
    run_plan,
)

__all__ = [
    "DEFAULT_WORKDIR",
    "CellOutcome",
    "Plan",
    "PlannedCell",
    "PreflightError",
    "RunReport",
    "Shard",
    "build_plan",
    "cell_folder",
    "load_plan",
    "parse_shard",
    "prepare",
    "render_failures",
    "render_fault",
    "render_plan",
    "render_summary",
    "run_plan",
]
