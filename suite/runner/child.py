"""A cell's own process: how the runner starts it, what it reads, what it runs, what it says.

Started by the runner once per cell as ``bnsuite _cell CELL.json --workdir DIR --device D`` (a
hidden sub-command, run as ``python -m suite _cell ...`` with the runner's interpreter). With
``--nproc N`` (``cell.nproc > 1``) it is a trampoline: it asks to die with the runner and becomes
``torchrun --standalone --nproc-per-node=N -m suite _cell CELL.json ...`` (``exec``), so killing
the runner also ends torchrun's agent and every rank (which asks the same of the agent).

It trains and evaluates the cell with :func:`suite.train.train_cell` (a bench cell,
``bench.steps >= 1``, is timed instead with :func:`suite.throughput.run_bench_cell`), resuming
from ``DIR/checkpoint.pt``; rank 0 reports on stdout with the event lines below. It never touches
the tracking store (the runner records, :mod:`suite.runner.execute`). Exit status: 0 after a
``result`` event, 1 after an ``error`` event.

The children get the runner's environment plus the resolved tracking URI
(``MLFLOW_TRACKING_URI``), the runner's pid (``BNSUITE_PARENT_PID``), unbuffered output and a
``PYTHONPATH`` that finds this very ``suite`` package. A child dies with its parent: on Linux it
asks the kernel for ``SIGKILL`` when the parent exits (:func:`die_with_parent`); elsewhere its
next write to the closed pipe fails.

Event lines. The cell's process writes one event per line, ``@bnsuite {"event": ..., ...}``
(compact JSON after a fixed marker); every other line (library warnings, tracebacks, torchrun's
own output) is plain log text. The marker may appear after a prefix (torchrun can prefix rank
output), so :func:`parse` looks for it anywhere in the line. Events, in the order a cell emits them:

=============  ================================================================================
``device``     ``name``, ``pid``: where the cell runs (recorded as tag ``suite.device``)
``metrics``    ``step``, ``values``: the loss and schedules every ``cell.log_every`` steps
``progress``   ``step``, ``total``, ``loss``, ``img_s``: after every training step
``result``     ``metrics``: the final metrics returned by ``train_cell``
``error``      ``reason`` (one line: ``<ExceptionType>: <message>``), ``traceback``
=============  ================================================================================

Non-finite floats are written as JSON ``NaN``/``Infinity`` (Python's ``json`` reads them back).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import IO, Any

from suite.cell import CellConfig

PARENT_ENV = "BNSUITE_PARENT_PID"
PR_SET_PDEATHSIG = 1
PROGRESS_EVERY_S = 0.25  # at most four progress events per second (and always the last step)
MARKER = "@bnsuite "
EVENTS = ("device", "metrics", "progress", "result", "error")


# -- starting it ---------------------------------------------------------------------------------
def child_command(nproc: int, cell_file: Path, workdir: Path, device: str) -> list[str]:
    """The argv that trains one cell (see the module docstring)."""
    args = [str(cell_file), "--workdir", str(workdir), "--device", device]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    return [sys.executable, "-m", "suite", "_cell", *args]


def torchrun_command(nproc: int, child_args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node=N -m suite _cell ARGS`` (same Python)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "suite",
        "_cell",
        *child_args,
    ]


def child_env(tracking_uri: str) -> dict[str, str]:
    """The runner's environment plus what a cell process needs (module docstring)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_root + (os.pathsep + path if path else "")
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env[PARENT_ENV] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def die_with_parent(expected_parent: int | None = None) -> None:
    """Linux: SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``, which
    survives ``exec``); exit now if ``expected_parent`` is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


# -- its input -----------------------------------------------------------------------------------
def write_cell(cell: CellConfig, path: Path) -> Path:
    """Store ``cell`` with its id as the child's input file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cell_id": cell.cell_id, "cell": cell.to_dict()}, indent=1))
    return path


def read_cell(path: Path) -> CellConfig:
    """The ``CellConfig`` of :func:`write_cell`'s file; its id must still match."""
    blob = json.loads(Path(path).read_text())
    cell = CellConfig.from_dict(blob["cell"])
    if cell.cell_id != blob["cell_id"]:
        raise ValueError(f"{path}: cell id {cell.cell_id} != recorded {blob['cell_id']}")
    return cell


# -- what it says --------------------------------------------------------------------------------
def encode(event: str, **fields: Any) -> str:
    """``@bnsuite {"event": event, **fields}`` (one line, no trailing newline)."""
    if event not in EVENTS:
        raise ValueError(f"event {event!r} is not one of {', '.join(EVENTS)}")
    return MARKER + json.dumps({"event": event, **fields}, separators=(",", ":"), default=str)


def emit(event: str, stream: IO[str] | None = None, **fields: Any) -> None:
    """Write one event line and flush (the runner renders progress as it arrives)."""
    out = stream if stream is not None else sys.stdout
    out.write(encode(event, **fields) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event dict of an event line; ``None`` for plain log text or a malformed event."""
    at = line.find(MARKER)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(MARKER) :])
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        return None
    return event


# -- what it runs --------------------------------------------------------------------------------
class Throughput:
    """Images per second over the last ``window`` steps: ``batch · Δsteps / Δt``."""

    def __init__(self, batch_size: int, window: int = 20) -> None:
        self.batch_size = batch_size
        self.marks: deque[tuple[int, float]] = deque(maxlen=window + 1)

    def update(self, step: int, now: float | None = None) -> float | None:
        self.marks.append((step, time.perf_counter() if now is None else now))
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
        return self.batch_size * (s1 - s0) / (t1 - t0) if s1 > s0 and t1 > t0 else None


def train(cell: CellConfig, workdir: Path, device: str, report: bool) -> None:
    """Train and evaluate ``cell`` (a bench cell: time its step, :mod:`suite.throughput`); emit
    events when ``report`` (rank 0)."""
    from suite import runtime
    from suite.train import train_cell

    if report:
        emit("device", name=runtime.device_name(runtime.resolve_device(device)), pid=os.getpid())
    meter = Throughput(cell.batch_size)
    last = [0.0]

    def progress(step: int, total: int, logs: dict[str, float]) -> None:
        img_s = meter.update(step)
        now = time.monotonic()
        if step >= total or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            emit("progress", step=step, total=total, loss=logs.get("loss"), img_s=img_s)

    def log_metrics(values: dict[str, float], step: int) -> None:
        emit("metrics", step=step, values=values)

    if cell.is_bench:  # a throughput point: timed steps, nothing trained or evaluated
        from suite.throughput import run_bench_cell

        metrics = run_bench_cell(cell, device=device, progress=progress if report else None)
    else:
        metrics = train_cell(
            cell,
            device=device,
            workdir=workdir,
            progress=progress if report else None,
            log_metrics=log_metrics if report else None,
        )
    if report:
        emit("result", metrics=metrics)


def run_cell(cell_file: Path, workdir: Path, device: str, nproc: int = 1) -> int:
    """``bnsuite _cell``: the body of the cell's process (module docstring); its exit status."""
    parent = os.environ.get(PARENT_ENV)
    if nproc > 1:  # the trampoline: die with the runner, become torchrun
        die_with_parent(int(parent) if parent else None)
        command = torchrun_command(
            nproc, [str(cell_file), "--workdir", str(workdir), "--device", device]
        )
        os.execv(command[0], command)
    die_with_parent(int(parent) if parent and "LOCAL_RANK" not in os.environ else None)
    report = int(os.environ.get("RANK", "0")) == 0
    try:
        train(read_cell(cell_file), workdir, device, report)
    except Exception as exc:
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        if report:
            emit("error", reason=f"{type(exc).__name__}: {exc}", traceback=text)
        return 1
    return 0
