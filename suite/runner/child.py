"""One cell in its own process: ``python -m suite.runner.child CELL.json --workdir DIR --device D``.

The runner starts this module once per cell (through ``torchrun`` when ``cell.nproc > 1``; then
every rank runs it and rank 0 reports). It trains and evaluates the cell with
:func:`suite.train.train_cell` (a bench cell, ``bench.steps >= 1``, is timed instead with
:func:`suite.throughput.run_bench_cell`), resuming from ``DIR/checkpoint.pt``, and reports on
stdout with the line protocol of :mod:`suite.runner.protocol`; it never touches the tracking
store (the runner records). Exit status: 0 after a ``result`` event, 1 after an ``error`` event.

The process dies with its parent: on Linux it asks the kernel for ``SIGKILL`` when the parent
exits (:func:`suite.runner.launch.die_with_parent`); elsewhere its next write to the closed pipe
fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import deque
from pathlib import Path

from suite.cell import CellConfig
from suite.runner.launch import PARENT_ENV, die_with_parent
from suite.runner.protocol import emit

PROGRESS_EVERY_S = 0.25  # at most four progress events per second (and always the last step)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.runner.child", description=__doc__)
    parser.add_argument("cell", type=Path, help="cell file written by the runner")
    parser.add_argument("--workdir", type=Path, required=True, help="the cell's checkpoint folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    parent = os.environ.get(PARENT_ENV)
    die_with_parent(int(parent) if parent and "LOCAL_RANK" not in os.environ else None)
    report = int(os.environ.get("RANK", "0")) == 0
    try:
        train(read_cell(args.cell), args.workdir, args.device, report)
    except Exception as exc:
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        if report:
            emit("error", reason=f"{type(exc).__name__}: {exc}", traceback=text)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
