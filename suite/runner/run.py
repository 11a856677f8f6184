"""``bnsuite run``: check everything that can be checked, then train the pending cells one by one.

Order (every check before any training)::

    load_plan     experiment file → ConfigError; tracking URI → TrackingError; the store's
                  FINISHED runs → which cells of this shard are pending (read-only: creates
                  nothing, so ``plan`` works on a missing or read-only store)
    prepare       each distinct dataset of the pending cells → DataError, and an in-memory
                  one's SSL sample count against each cell's batch_size → DataError; the device
                  (and GPUs for multi-process cells) → PreflightError; the work folder (a folder,
                  or creatable, and writable) → PreflightError; only then the store and the
                  MLflow experiment are created → TrackingError (nothing is left behind)
    run_plan      per pending cell: lock, start run, child process, record (suite.runner.execute)

A failed cell does not stop the matrix; :attr:`RunReport.exit_code` is 1 when any cell failed. A
store that stops answering (unreachable for the retry budget of
:mod:`suite.tracking.faults`, or a full disk) does: no further result could be recorded, so the
report carries the fault, :func:`render_fault` says it in one message, and the exit code is 1.
Resuming is the same command again: FINISHED cells are skipped, an interrupted cell restarts from
``<workdir>/<experiment>/<cell_id>/checkpoint.pt``, and a cell trained but not recorded is recorded
from its ``summary.json``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from suite import disk
from suite.runner.execute import (
    BUSY,
    NOT_STARTED,
    SKIPPED,
    UNRECORDED,
    CellOutcome,
    train_and_record,
)
from suite.runner.plan import Plan, PlannedCell, Shard, build_plan
from suite.runner.progress import ProgressView, format_table, percent, rate

if TYPE_CHECKING:
    from suite.tracking import Tracker
    from suite.tracking.faults import StoreFault

DEFAULT_WORKDIR = "runs"
#: libraries whose log lines a failing store would flood the terminal with (the runner reports)
STORE_LOGGERS = ("mlflow", "urllib3", "alembic", "sqlalchemy")


class PreflightError(ValueError):
    """A problem found before training (device, GPUs): the message names it and the choices."""


def load_plan(
    path: str | Path,
    *,
    tracking_uri: str | None = None,
    data_root: str | None = None,
    shard: Shard | None = None,
    seeds: Sequence[int] | None = None,
    write: bool = True,
) -> Plan:
    """Validate the experiment file, resolve and check the tracking store (for writing, unless
    ``write`` is False), read what is done. Creates nothing.

    ``seeds`` replaces the file's seeds (see :func:`suite.config.load_experiment`)."""
    from suite.config import load_experiment
    from suite.tracking import check_tracking, resolve_tracking_uri

    experiment = load_experiment(path, data_root=data_root, seeds=seeds)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri, write=write)
    return build_plan(experiment, uri, shard)


def check_device(device: str, nproc: int) -> None:
    """``device`` resolves on this machine; multi-process CUDA cells have that many GPUs."""
    import torch

    from suite import runtime

    try:
        resolved = runtime.resolve_device(device)
    except ValueError as exc:
        raise PreflightError(f"--device: {exc}") from None
    if resolved.type == "cuda" and nproc > torch.cuda.device_count():
        raise PreflightError(
            f"nproc: a cell asks for {nproc} processes on CUDA but this machine has "
            f"{torch.cuda.device_count()} GPU(s); lower nproc or use --device cpu"
        )


def check_workdir(workdir: str | Path) -> None:
    """``--workdir`` is a folder, or can be created: its closest existing ancestor is a folder
    that accepts a new file (probed with a temporary file, removed at once). Creates nothing."""
    path = Path(workdir).absolute()
    existing = disk.nearest_existing(path)
    try:
        if not existing.is_dir():
            what = "is" if existing == path else f"(an ancestor of {path}) is"
            raise NotADirectoryError(f"{existing} {what} a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".bnsuite-probe-"):
            pass
    except OSError as exc:
        raise PreflightError(
            f"--workdir: {path} cannot hold the cells' checkpoints and logs ({exc}); choose "
            "another --workdir (a folder, or a path whose existing part is a writable folder)"
        ) from None


def check_batches(pending: Sequence[PlannedCell]) -> None:
    """Every cell's ``batch_size`` fits its dataset (batches drop the remainder, so a batch
    larger than the SSL samples trains zero steps): checked for in-memory datasets, whose
    sample count is known here; DataError naming the cell, the value and the limit."""
    from suite.data import ssl_sample_count

    counts: dict[tuple[str, str | None], int | None] = {}
    problems = []
    for planned in pending:
        cell = planned.cell
        key = (cell.dataset.name, cell.dataset.root)
        if key not in counts:
            counts[key] = ssl_sample_count(cell.dataset.name, cell.dataset.root)
        count = counts[key]
        if count is not None and cell.batch_size > count:
            problems.append(
                f"batch_size: {cell.batch_size} (cell {cell.cell_id}) is larger than the "
                f"{count} SSL samples of dataset {cell.dataset.name!r} (batches drop the "
                f"remainder); choose batch_size <= {count}"
            )
    if problems:
        from suite.data import DataError

        raise DataError("\n".join(dict.fromkeys(problems)))


def prepare(plan: Plan, device: str, *, workdir: str | Path | None = None) -> Tracker | None:
    """The checks of the module docstring; the tracker, or None when nothing is pending.

    Artifacts of a newly created MLflow experiment go beside a SQLite store, or under
    ``<workdir>/mlruns`` for other databases (:func:`suite.tracking.tracker.default_artifact_root`).
    """
    from suite.data import check_dataset
    from suite.tracking import Tracker
    from suite.tracking.faults import retry_budget

    pending = plan.pending
    if not pending:
        return None
    for name, root in dict.fromkeys((c.cell.dataset.name, c.cell.dataset.root) for c in pending):
        check_dataset(name, root)
    check_batches(pending)
    check_device(device, max(c.cell.nproc for c in pending))
    if workdir is not None:
        check_workdir(workdir)
    with retry_budget():
        return Tracker(plan.tracking_uri, plan.name, workdir=workdir)


@dataclass
class RunReport:
    """Every cell of the shard: done before, trained now (FINISHED/FAILED), busy, skipped."""

    plan: Plan
    outcomes: list[CellOutcome]
    interrupted: bool = False
    fault: StoreFault | None = None  # the store stopped answering; the matrix stopped there
    workdir: Path | None = None

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]

    @property
    def busy(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == BUSY]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.fault is not None else 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler cancelling the job) raises KeyboardInterrupt, so the running cell is
    stopped and recorded KILLED; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_plan(
    plan: Plan,
    tracker: Tracker | None,
    *,
    workdir: str | Path = DEFAULT_WORKDIR,
    device: str = "auto",
    view: ProgressView | None = None,
) -> RunReport:
    """Train the plan's pending cells in order, each in its own process (module docstring)."""
    from suite.tracking.faults import retry_budget
    from suite.tracking.store import quiet

    view = view or ProgressView()
    workdir = Path(workdir).resolve()
    outcomes = [CellOutcome(c, "done", metrics=c.metrics) for c in plan.cells if c.done]
    pending = plan.pending
    report = RunReport(plan, outcomes, workdir=workdir)
    if tracker is None:
        return report
    with (
        _sigterm_as_interrupt(),
        retry_budget(),
        quiet(*STORE_LOGGERS, level=logging.CRITICAL),
    ):
        for n, planned in enumerate(pending, 1):
            view.start(f"[{n}/{len(pending)}] {planned.cell_id}")
            axes = f" ({planned.label})" if planned.label else ""
            view.message(f"[{n}/{len(pending)}] cell {planned.cell_id}{axes}: start")
            try:
                outcome = train_and_record(
                    planned, tracker, workdir=workdir, device=device, view=view
                )
            except KeyboardInterrupt:
                view.message(f"[{n}/{len(pending)}] cell {planned.cell_id}: interrupted")
                outcomes.append(CellOutcome(planned, "KILLED", "interrupted by the user"))
                report.interrupted = True
                break
            outcomes.append(outcome)
            view.message(f"[{n}/{len(pending)}] cell {planned.cell_id}: {_verdict(outcome)}")
            if outcome.fault is not None:
                report.fault = outcome.fault
                why = "not started: the tracking store stopped answering"
                outcomes.extend(CellOutcome(p, NOT_STARTED, why) for p in pending[n:])
                break
    outcomes.sort(key=lambda o: o.planned.position)
    return report


def _verdict(outcome: CellOutcome) -> str:
    if outcome.status == "FINISHED":
        m = outcome.metrics
        note = f"; {outcome.reason}" if outcome.reason else ""
        return (
            f"FINISHED (kNN top-1 {beside_floor(m, 'knn/top1')} %, linear top-1 "
            f"{beside_floor(m, 'linear/top1')} %, {rate(m.get('images_per_s'))} img/s{note})"
        )
    if outcome.fault is not None:
        return outcome.status
    first = (outcome.reason or "").splitlines()[0] if outcome.reason else ""
    return f"{outcome.status}: {first}" if first else outcome.status


def beside_floor(metrics: dict[str, float], key: str) -> str:
    """``91.39 (floor 85.00)``: an accuracy in percent beside the same probe on the random-init
    encoder (``<key>_random_init``), or the accuracy alone when no floor was measured."""
    value = percent(metrics.get(key))
    floor = metrics.get(f"{key}_random_init")
    return value if floor is None else f"{value} (floor {percent(floor)})"


def render_summary(report: RunReport) -> str:
    """The final table (cell, axes, kNN top-1 and linear top-1 each beside its random-init
    floor, img/s, status) and the totals."""
    plan = report.plan
    headers = ["#", "cell_id", *plan.fields, "kNN top-1 %", "linear top-1 %", "img/s", "status"]
    rows = []
    for o in report.outcomes:
        m = o.metrics
        status = {
            "done": "done (skipped)",
            BUSY: "busy (other runner)",
            SKIPPED: "done (other runner)",
        }
        rows.append(
            [
                o.planned.position,
                o.planned.cell_id,
                *o.planned.axes.values(),
                beside_floor(m, "knn/top1"),
                beside_floor(m, "linear/top1"),
                rate(m.get("images_per_s")),
                status.get(o.status, o.status),
            ]
        )
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    totals = ", ".join(f"{v} {k}" for k, v in counts.items())
    scope = "" if plan.shard.count == 1 else f" (shard {plan.shard})"
    return f"experiment {plan.name!r}{scope}: {totals}\n" + format_table(headers, rows)


def render_fault(report: RunReport) -> str:
    """The one message for a store that stopped answering: which store, since when, that the
    checkpoints are kept and that the same command records what is left (``summary.json``)."""
    fault = report.fault
    assert fault is not None
    where = f" in {report.workdir}" if report.workdir is not None else ""
    fix = "free space on the store's disk, then rerun" if fault.kind == "disk full" else "rerun"
    text = (
        f"bnsuite run: {fault.describe(report.plan.tracking_uri)}; checkpoints kept{where}; "
        f"{fix} the same command to record"
    )
    saved = [o for o in report.outcomes if o.saved is not None and o.status == UNRECORDED]
    for o in saved:
        text += f" (cell {o.planned.cell_id} is trained: its result waits in {o.saved})"
    return text


def render_failures(report: RunReport) -> str:
    """One block per failed cell: id, axes, the reason (all lines), the log file; a cell that
    failed because the store stopped answering is left to :func:`render_fault` ("" when no other
    cell failed)."""
    failed = [o for o in report.failed if o.fault is None]
    if not failed:
        return ""
    lines = [f"{len(failed)} cell(s) failed:"]
    for o in failed:
        axes = f" ({o.planned.label})" if o.planned.label else ""
        lines.append(f"  cell {o.planned.cell_id}{axes}: {o.reason}")
        if o.log is not None:
            lines.append(f"    log: {o.log}")
    return "\n".join(lines)
