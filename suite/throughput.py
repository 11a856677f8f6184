"""Bench cells: the points of the throughput study, run and recorded by the runner like any cell.

A cell with ``bench.steps >= 1`` (:class:`suite.cell.BenchConfig`) is not trained and evaluated:
its process (``bnsuite _cell``, under ``torchrun`` when ``nproc > 1``) times the
cell's training step on random views already on the device, and the runner records the figures
in MLflow as it records every cell's metrics — so ``bnsuite check`` gates them with baselines and
``bnsuite report`` draws them.

How drift is cancelled (interleaving). A run of the study takes minutes to hours on a shared
machine, so absolute images/s of two cells measured at different times are not comparable at the
percent level. Every bench cell therefore times, *in the same processes and interleaved round by
round*, its own step and

* the same method with per-device BN on both sides (``local/local``, ``bench.reference``), and
* a supervised step on the same 2B images (backbone + linear layer + cross-entropy,
  ``bench.supervised``): the floor a two-view method cannot beat,

and logs the per-round ratios' medians (``images_per_s_vs_local``, ``images_per_s_vs_supervised``)
beside the absolute figures. Relations between strategies are best gated on these ratios.

Figures (rank 0 logs them; every rank measures):

* ``step_ms``: median over the timed rounds of the slowest rank's step time (the step is
  EMA + forwards + loss + backward + optimiser step; DDP wraps the student when ``nproc > 1``);
  ``images_per_s`` = global batch / ``step_ms`` (= images/s summed over ranks);
* ``collective_fraction``: Σ time inside the blocking collectives that the step calls through
  ``torch.distributed`` (SyncBN's all-gather and all-reduce, ShuffleBN's all-gather and broadcast,
  MoCo's key gather) / Σ step time, averaged over ranks; ``collective_ms`` the median per step.
  Timed per call: wall clock on CPU, CUDA events on the current stream on CUDA. DDP's gradient
  all-reduce (C++, bucketed, overlapped with the backward, the same for every BN strategy) is not
  in it. 0 for one process;
* ``peak_memory_mb``: CUDA — peak allocated during the cell's own steps, before the reference is
  built; CPU — the process's peak resident set at that point; the maximum over ranks;
* ``gflops_per_image``: model FLOPs of one training step (``FlopCounterMode``: convolutions and
  matrix products, forward and backward, all ranks) per sample of the global batch;
  ``mfu`` = gflops_per_image · images_per_s / (peak · nproc), where ``peak`` is the card's dense
  bf16 tensor peak from :data:`PEAK_BF16_FLOPS` — only for bf16 autocast on a listed GPU (CPU and
  unlisted cards: not logged, shown as n/a);
* ``local_step_ms``, ``local_images_per_s``, ``images_per_s_vs_local`` (median of per-round
  local/cell step-time ratios: > 1 means faster than local/local); ``supervised_step_ms``,
  ``images_per_s_vs_supervised`` (median of per-round supervised/cell ratios, ≤ 1);
* ``bench/rounds``, ``bench/world``, ``wall_time_s``.

On CUDA nothing in the timing loop synchronises the host: steps and collectives are bracketed by
CUDA events, read after one synchronisation at the end. (The method's own ``float(loss)`` log and
SyncBN's sample count read are host reads inside the step; they are part of what is timed, as in
training.)

``python -m suite.throughput EXP.yaml [EXP.yaml ...]`` prints the compact table of the
experiments' recorded bench cells (``scripts/gpu_check.sh`` writes it to a file named after the
device).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from suite import runtime
from suite.cell import CellConfig

#: Dense bf16 tensor-core peak in FLOP/s per GPU, from NVIDIA's data sheets, matched as a
#: substring of ``torch.cuda.get_device_name`` (first match wins, so specific names come first).
#: A card that is not listed, fp32 runs and the CPU have no peak here: their MFU is n/a.
PEAK_BF16_FLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", None),  # not stated here: n/a rather than the SXM number
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
)
#: ``torch.distributed`` functions timed as collectives (blocking calls only)
COLLECTIVES = (
    "all_gather",
    "all_reduce",
    "broadcast",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "all_to_all_single",
)


def peak_flops(device_name: str, precision_dtype: torch.dtype | None) -> float | None:
    """The card's dense bf16 peak (FLOP/s) from :data:`PEAK_BF16_FLOPS`, or None (n/a) for an
    unlisted device, the CPU, or a run that is not bf16."""
    if precision_dtype is not torch.bfloat16:
        return None
    for key, value in PEAK_BF16_FLOPS:
        if key in device_name:
            return value
    return None


@dataclass
class _Round:
    """One contender's timing marks of one round (CUDA events or wall-clock seconds)."""

    start: Any = None
    end: Any = None
    collectives: list[Any] = field(default_factory=list)  # (start, end) pairs or seconds


class StepTimer:
    """Times whole steps and the collectives inside them without synchronising the host on CUDA.

    ``with timer.step(name):`` brackets one step; while :meth:`patched` is active, every blocking
    ``torch.distributed`` collective (:data:`COLLECTIVES`) called during a step is bracketed too.
    :meth:`read` synchronises once and returns seconds per step and per step's collectives.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.rounds: dict[str, list[_Round]] = {}
        self._current: _Round | None = None

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextlib.contextmanager
    def step(self, name: str, record: bool = True) -> Iterator[None]:
        """Time the enclosed step as one round of ``name`` (kept when ``record``)."""
        marks = _Round(start=self._mark())
        self._current = marks
        try:
            yield
        finally:
            marks.end = self._mark()
            self._current = None
        if record:
            self.rounds.setdefault(name, []).append(marks)

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Replace the collectives of ``torch.distributed`` by timed ones while active."""
        originals = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}

        def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                marks = self._current
                if marks is None or kwargs.get("async_op"):
                    return fn(*args, **kwargs)
                t0 = self._mark()
                out = fn(*args, **kwargs)
                marks.collectives.append((t0, self._mark()))
                return out

            return call

        for name, fn in originals.items():
            setattr(dist, name, timed(fn))
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)

    def read(self) -> dict[str, tuple[list[float], list[float]]]:
        """``name -> (step seconds, collective seconds per step)`` over the recorded rounds."""
        if self.cuda:
            torch.cuda.synchronize()

        def seconds(a: Any, b: Any) -> float:
            return a.elapsed_time(b) / 1e3 if self.cuda else b - a

        return {
            name: (
                [seconds(r.start, r.end) for r in rounds],
                [sum(seconds(a, b) for a, b in r.collectives) for r in rounds],
            )
            for name, rounds in self.rounds.items()
        }


@dataclass
class Contender:
    """A step to time: ``step(k)`` runs training step k."""

    name: str
    step: Callable[[int], None]


def method_contender(
    name: str,
    cell: CellConfig,
    device: torch.device,
    views: tuple[torch.Tensor, torch.Tensor],
    total_steps: int,
    world: int,
) -> Contender:
    """``cell``'s method (optimiser as in training; DDP-wrapped student when ``world > 1``)."""
    from suite.methods import build_method
    from suite.train import build_optimizer

    torch.manual_seed(cell.seed)
    method = build_method(cell, total_steps=total_steps, num_ssl_samples=1_000_000)
    channels_last = runtime.use_channels_last(device, cell.channels_last)
    method.to(device, memory_format=torch.channels_last) if channels_last else method.to(device)
    if world > 1:
        method.wrap_student(
            lambda m: nn.parallel.DistributedDataParallel(
                m, device_ids=[device.index] if device.type == "cuda" else None
            )
        )
    optimizer = build_optimizer(cell, method.student_parameters(), cell.batch_size)
    autocast = runtime.autocast_context(device, cell.precision)
    method.train()
    v1, v2 = views

    def step(k: int) -> None:
        with autocast:
            loss, _ = method.training_step(v1, v2, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return Contender(name, step)


def supervised_contender(
    cell: CellConfig, device: torch.device, views: tuple[torch.Tensor, torch.Tensor], world: int
) -> Contender:
    """The floor: ``cell``'s backbone + Linear(d, 1000), cross-entropy on both views' images
    (2B per step), one SGD step; per-process BN; DDP when ``world > 1``."""
    from suite.models import build_backbone

    torch.manual_seed(cell.seed)
    backbone, dim = build_backbone(
        cell.backbone, image_size=cell.dataset.image_size, cifar_stem=cell.cifar_stem
    )
    model: nn.Module = nn.Sequential(backbone, nn.Linear(dim, 1000)).to(device)
    if runtime.use_channels_last(device, cell.channels_last):
        model.to(memory_format=torch.channels_last)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.cat(views)
    y = torch.randint(0, 1000, (x.shape[0],), device=device)
    autocast = runtime.autocast_context(device, cell.precision)

    def step(k: int) -> None:
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return Contender("supervised", step)


def count_flops(step: Callable[[], None]) -> float | None:
    """Model FLOPs of one call of ``step`` (``torch.utils.flop_counter``), None if not countable."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        return float(counter.get_total_flops())
    except Exception:  # an op the counter cannot follow: MFU is then n/a, the timing still runs
        return None


def _gather(values: list[float], device: torch.device, world: int) -> torch.Tensor:
    """``[world, len(values)]``: every rank's values (``[1, n]`` without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world <= 1:
        return t[None]
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return torch.stack(out)


def run_bench_cell(
    cell: CellConfig,
    *,
    device: str = "auto",
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Time ``cell``'s step interleaved with its references (module docstring); every rank
    returns the same figures. Joins the ``torchrun`` job when there is one."""
    from suite.train import join_cell_job

    start_time = time.perf_counter()
    dev, dinfo = join_cell_job(cell, device)
    world, bench = dinfo.world, cell.bench
    local = cell.batch_size // world
    channels_last = runtime.use_channels_last(dev, cell.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(cell.seed + dinfo.rank)
    shape = (local, 3, cell.dataset.image_size, cell.dataset.image_size)
    views = (
        torch.randn(shape, device=dev).contiguous(memory_format=fmt),
        torch.randn(shape, device=dev).contiguous(memory_format=fmt),
    )
    rounds = bench.warmup + bench.steps
    total_steps = rounds + 2
    runtime.reset_peak_memory(dev)
    subject = method_contender("cell", cell, dev, views, total_steps, world)
    flops = count_flops(lambda: subject.step(0))  # untimed, as a warm-up step
    subject.step(1)
    peak_mb = runtime.peak_memory_mb(dev)
    contenders = [subject]
    if bench.reference:
        ref = cell.replace(student_bn="local", teacher_bn="local")
        contenders.append(method_contender("local", ref, dev, views, total_steps, world))
    if bench.supervised:
        contenders.append(supervised_contender(cell, dev, views, world))

    timer = StepTimer(dev)
    with timer.patched():
        for r in range(rounds):
            for c in contenders:
                with timer.step(c.name, record=r >= bench.warmup):
                    c.step(2 + r)
            if progress is not None:
                progress(r + 1, rounds, {})
    measured = timer.read()

    def slowest(name: str) -> list[float]:  # per round, the slowest rank's step seconds
        return _gather(measured[name][0], dev, world).max(0).values.tolist()

    cell_s = slowest("cell")
    coll = _gather(measured["cell"][1], dev, world)
    own = _gather(measured["cell"][0], dev, world)
    step_s = statistics.median(cell_s)
    metrics: dict[str, float] = {
        "step_ms": 1e3 * step_s,
        "images_per_s": cell.batch_size / step_s,
        "collective_fraction": float((coll.sum(1) / own.sum(1)).mean()),
        "collective_ms": 1e3 * statistics.median(coll.mean(0).tolist()),
        "peak_memory_mb": float(_gather([peak_mb], dev, world).max()),
        "bench/rounds": float(bench.steps),
        "bench/world": float(world),
    }
    if bench.reference:
        ref_s = slowest("local")
        metrics["local_step_ms"] = 1e3 * statistics.median(ref_s)
        metrics["local_images_per_s"] = cell.batch_size / statistics.median(ref_s)
        metrics["images_per_s_vs_local"] = statistics.median(
            r / c for r, c in zip(ref_s, cell_s, strict=True)
        )
    if bench.supervised:
        sup_s = slowest("supervised")
        metrics["supervised_step_ms"] = 1e3 * statistics.median(sup_s)
        metrics["images_per_s_vs_supervised"] = statistics.median(
            s / c for s, c in zip(sup_s, cell_s, strict=True)
        )
    counted = _gather([flops if flops is not None else float("nan")], dev, world)
    if bool(torch.isfinite(counted).all()):
        per_image = float(counted.sum()) / cell.batch_size
        metrics["gflops_per_image"] = per_image / 1e9
        peak = peak_flops(runtime.device_name(dev), runtime.autocast_dtype(dev, cell.precision))
        if peak is not None:
            metrics["mfu"] = per_image * metrics["images_per_s"] / (peak * world)
    metrics["wall_time_s"] = time.perf_counter() - start_time
    return metrics


# -- the compact table -------------------------------------------------------------------------
TABLE_HEADERS = (
    "method",
    "backbone",
    "px",
    "batch",
    "nproc",
    "devices",
    "student/teacher",
    "step ms",
    "img/s",
    "× local/local",
    "× supervised",
    "collectives %",
    "GFLOP/img",
    "MFU %",
    "peak MB",
)


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def table_rows(plans: Sequence[Any]) -> list[list[str]]:
    """One row per finished bench cell of ``plans`` (:class:`suite.runner.plan.Plan`)."""
    rows = []
    for plan in plans:
        for pc in plan.cells:
            c, m = pc.cell, pc.metrics
            if not (c.is_bench and pc.done):
                continue
            rows.append(
                [
                    c.method.name,
                    c.backbone,
                    str(c.dataset.image_size),
                    str(c.batch_size),
                    str(c.nproc),
                    str(c.devices),
                    f"{c.student_bn}/{c.teacher_bn}",
                    _fmt(m.get("step_ms"), ".1f"),
                    _fmt(m.get("images_per_s"), ".1f"),
                    _fmt(m.get("images_per_s_vs_local"), ".3f"),
                    _fmt(m.get("images_per_s_vs_supervised"), ".3f"),
                    _fmt(m.get("collective_fraction"), ".1f", 100.0),
                    _fmt(m.get("gflops_per_image"), ".2f"),
                    _fmt(m.get("mfu"), ".1f", 100.0),
                    _fmt(m.get("peak_memory_mb"), ".0f"),
                ]
            )
    return rows


def devices_of(plans: Sequence[Any]) -> list[str]:
    """The distinct ``suite.device`` tags of the plans' finished bench runs."""
    return sorted(
        {
            pc.tags.get("suite.device", "unknown")
            for plan in plans
            for pc in plan.cells
            if pc.done and pc.cell.is_bench
        }
    )


def render_table(plans: Sequence[Any]) -> str:
    """The compact Markdown table of the plans' finished bench cells, with the device(s)."""
    from suite.report import Table

    rows = table_rows(plans)
    head = f"device: {', '.join(devices_of(plans)) or 'none'}; {len(rows)} bench cell(s)\n\n"
    return head + Table(TABLE_HEADERS, rows).markdown() + "\n"


def slug(text: str) -> str:
    """``NVIDIA H200`` → ``NVIDIA-H200``: a file-name-safe form of a device name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"


def main(argv: list[str] | None = None) -> int:
    """``python -m suite.throughput EXP.yaml ... [--tracking-uri URI]``: print the table of the
    experiments' finished bench cells; exit 1 when there is none."""
    parser = argparse.ArgumentParser(prog="python -m suite.throughput", description=__doc__)
    parser.add_argument("experiments", nargs="+", type=Path)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    from suite.runner.run import load_plan

    plans = [load_plan(p, tracking_uri=args.tracking_uri, write=False) for p in args.experiments]
    print(render_table(plans))
    return 0 if table_rows(plans) else 1


if __name__ == "__main__":
    sys.exit(main())
