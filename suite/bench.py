"""Throughput of one training step on synthetic tensors already on the device (``bnsuite bench``).

No data loading is timed unless ``--data`` is given (then the data path alone is timed too). Every
figure is a median over ``steps`` timed steps after ``warmup`` untimed ones, all in one process,
so ratios between configurations measured in one run are meaningful on a noisy machine:

* ``step_ms`` / ``images_per_s``: the whole training step (EMA, student and teacher forwards,
  loss, backward, optimiser) for a global batch of B samples (2B views);
* ``ema_ms`` / ``ema_fraction``: the teacher EMA update alone, and its share of the step;
* ``supervised_step_ms`` (``--reference``): the same backbone trained with cross-entropy on the same
  2B images — the floor a two-view method cannot beat (≈ 1.33× for BYOL: one more forward).

``--nproc P`` runs P processes (gloo on CPU, NCCL on CUDA) with DDP, each holding B/P samples
per view: the real cross-process cost of SyncBN against MomentumBN. Without ``--devices`` there
are P devices (one per process); ``--devices D`` (a multiple of P) emulates D/P per process.

This is the ad-hoc tool for one configuration. The throughput *study* (every strategy, process
counts, resolutions, recorded in MLflow and gated by baselines) is ``experiments/throughput.yaml``,
whose bench cells are timed by :mod:`suite.throughput`.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any

import torch

from suite import runtime
from suite.cell import CellConfig, DatasetConfig, MethodConfig
from suite.recipes import recipe


def bench_cell(
    method: str = "byol",
    backbone: str = "resnet18",
    image_size: int = 32,
    batch_size: int = 64,
    student_bn: str | None = None,
    teacher_bn: str | None = None,
    devices: int = 1,
    nproc: int = 1,
    precision: str = "auto",
    channels_last: bool | None = None,
) -> CellConfig:
    """The cell a benchmark times: the method's recipe (``suite.recipes``: heads, BN strategies —
    BYOL sync/sync, M2T local/momentum, MoCo v2 local/shuffle — unless given), as ``bnsuite
    run`` resolves it."""
    r = recipe(method)
    return CellConfig(
        experiment="bench",
        dataset=DatasetConfig(name="synthetic", image_size=image_size, num_workers=2),
        backbone=backbone,
        method=MethodConfig(name=method, queue_size=4096),
        batch_size=batch_size,
        devices=devices,
        nproc=nproc,
        student_bn=student_bn or r.student_bn,
        teacher_bn=teacher_bn or r.teacher_bn,
        precision=precision,
        channels_last=channels_last,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def time_training_step(
    cell: CellConfig, device: torch.device, steps: int, warmup: int, rank: int = 0, world: int = 1
) -> dict[str, float]:
    """Median step time of ``cell``'s method on random views (this process's share of the batch)."""
    from suite.methods import build_method

    total = steps + warmup
    torch.manual_seed(cell.seed)
    method = build_method(cell, total_steps=max(total, 1), num_ssl_samples=1_000_000)
    channels_last = runtime.use_channels_last(device, cell.channels_last)
    method.to(device, memory_format=torch.channels_last) if channels_last else method.to(device)
    if world > 1:
        method.wrap_student(
            lambda m: torch.nn.parallel.DistributedDataParallel(
                m,
                device_ids=[device.index] if device.type == "cuda" else None,
            )
        )
    optimizer = torch.optim.SGD(method.student_parameters(), lr=0.01, momentum=0.9)
    local = cell.batch_size // world
    shape = (local, 3, cell.dataset.image_size, cell.dataset.image_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    v1 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    v2 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    autocast = runtime.autocast_context(device, cell.precision)
    runtime.reset_peak_memory(device)
    step_s, ema_s = [], []
    method.train()
    for k in range(total):
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss, _ = method.training_step(v1, v2, k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        t1 = time.perf_counter()
        method.update_teacher(0.99)  # the EMA alone, timed outside the step
        _sync(device)
        t2 = time.perf_counter()
        if k >= warmup:
            step_s.append(t1 - t0)
            ema_s.append(t2 - t1)
    step_ms = _median_ms(step_s)
    ema_ms = _median_ms(ema_s)
    return {
        "step_ms": step_ms,
        "images_per_s": cell.batch_size / (step_ms / 1e3),
        "ema_ms": ema_ms,
        "ema_fraction": ema_ms / step_ms,
        "peak_memory_mb": runtime.peak_memory_mb(device),
    }


def time_supervised_step(
    cell: CellConfig, device: torch.device, steps: int, warmup: int
) -> dict[str, float]:
    """The reference: backbone + linear classifier, cross-entropy on 2B images, one SGD step."""
    from suite.models import build_backbone

    torch.manual_seed(cell.seed)
    backbone, dim = build_backbone(
        cell.backbone, image_size=cell.dataset.image_size, cifar_stem=cell.cifar_stem
    )
    model = torch.nn.Sequential(backbone, torch.nn.Linear(dim, 1000)).to(device)
    channels_last = runtime.use_channels_last(device, cell.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = 2 * cell.batch_size
    x = torch.randn(n, 3, cell.dataset.image_size, cell.dataset.image_size, device=device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (n,), device=device)
    autocast = runtime.autocast_context(device, cell.precision)
    times = []
    for k in range(steps + warmup):
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return {"supervised_step_ms": _median_ms(times)}


def time_data_path(
    cell: CellConfig, device: torch.device, batches: int, root: str | None = None
) -> dict[str, float]:
    """Two-view batches per second from ``cell``'s dataset, with nothing else running."""
    from suite.train import build_cell_data

    if root is not None:
        cell = replace(cell, dataset=replace(cell.dataset, root=root))
    data = build_cell_data(cell, device)
    it = iter(data.ssl_epoch(0))
    next(it)  # start-up (workers, first batch) is not the steady state
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"data_images_per_s": n * cell.batch_size / max(elapsed, 1e-9)}


def _worker(
    rank: int,
    world: int,
    store: str,
    cell_dict: dict,
    device: str,
    steps: int,
    warmup: int,
    out: str,
) -> None:
    import torch.distributed as dist

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cell = CellConfig.from_dict(cell_dict)
        result = time_training_step(cell, dev, steps, warmup, rank, world)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def run_bench(
    cell: CellConfig,
    *,
    device: str = "auto",
    steps: int = 10,
    warmup: int = 3,
    reference: bool = False,
    data_batches: int = 0,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Time ``cell``'s training step (and optionally the supervised reference and data path)."""
    dev = runtime.resolve_device(device)
    result: dict[str, Any] = {
        "method": cell.method.name,
        "backbone": cell.backbone,
        "image_size": cell.dataset.image_size,
        "batch_size": cell.batch_size,
        "student_bn": cell.student_bn,
        "teacher_bn": cell.teacher_bn,
        "devices": cell.devices,
        "nproc": cell.nproc,
        "device": runtime.device_name(dev),
        "precision": cell.precision,
        "torch": torch.__version__,
        "steps": steps,
        "warmup": warmup,
    }
    if cell.nproc > 1:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.json")
            mp.spawn(
                _worker,
                args=(
                    cell.nproc,
                    os.path.join(tmp, "store"),
                    cell.to_dict(),
                    dev.type,
                    steps,
                    warmup,
                    out,
                ),
                nprocs=cell.nproc,
                join=True,
            )
            with open(out) as f:
                result.update(json.load(f))
    else:
        result.update(time_training_step(cell, dev, steps, warmup))
    if reference:
        result.update(time_supervised_step(replace(cell, nproc=1), dev, steps, warmup))
        result["step_over_supervised"] = result["step_ms"] / result["supervised_step_ms"]
    if data_batches:
        result.update(time_data_path(cell, dev, data_batches, data_root))
    return result


def _check_backbone(name: str, image_size: int, cifar_stem: bool | None) -> str | None:
    """Why ``--backbone name`` cannot be benchmarked (unknown timm model, no BatchNorm, a CIFAR
    stem it does not support), or None. The model is built on the meta device: no memory, no
    weights, milliseconds."""
    from suite.config.checks import backbone as check_name
    from suite.config.errors import Invalid
    from suite.models import build_backbone

    try:
        check_name(name)
    except Invalid as exc:
        return f"--backbone {exc}"
    try:
        with torch.device("meta"):
            build_backbone(name, image_size=image_size, cifar_stem=cifar_stem)
    except ValueError as exc:
        return f"--backbone {name!r}: {str(exc).split(': ', 1)[-1]}"
    return None


def problems(args) -> list[str]:
    """Every reason the ``bnsuite bench`` arguments cannot run, one line each naming the flag,
    the value and the valid choices; empty when they can. Checked before anything is built."""
    out = []
    positive = {
        "--batch-size": args.batch_size,
        "--devices": args.devices,
        "--nproc": args.nproc,
        "--image-size": args.image_size,
        "--steps": args.steps,
    }
    for flag, value in positive.items():
        if value < 1:
            out.append(f"{flag} {value}: must be an integer >= 1")
    for flag, value in {"--warmup": args.warmup, "--data": args.data}.items():
        if value < 0:
            out.append(f"{flag} {value}: must be an integer >= 0")
    if args.batch_size >= 1 and args.devices >= 1 and args.batch_size % args.devices:
        out.append(f"--batch-size {args.batch_size} is not divisible by --devices {args.devices}")
    if args.devices >= 1 and args.nproc >= 1 and args.devices % args.nproc:
        out.append(f"--devices {args.devices} is not a multiple of --nproc {args.nproc}")
    if args.student_bn in ("momentum", "shuffle"):
        out.append(
            f"--student-bn {args.student_bn}: a teacher-only strategy; choose from local, sync"
        )
    try:
        device = runtime.resolve_device(args.device)
    except ValueError:
        out.append(
            f"--device {args.device}: torch sees no CUDA device on this machine; "
            "choose from auto, cpu"
        )
    else:
        if device.type == "cuda" and args.nproc > torch.cuda.device_count():
            out.append(
                f"--nproc {args.nproc}: more processes than the {torch.cuda.device_count()} "
                "GPU(s) of this machine on --device cuda; lower --nproc or use --device cpu"
            )
    if args.image_size >= 1:
        bad = _check_backbone(args.backbone, args.image_size, args.cifar_stem)
        if bad:
            out.append(bad)
    if args.data > 0:
        from suite.data import DATASETS, DataError, check_dataset

        if args.dataset not in DATASETS:
            out.append(f"--dataset {args.dataset!r}: unknown; choose from {', '.join(DATASETS)}")
        else:
            try:
                check_dataset(args.dataset, args.data_root)
            except DataError as exc:
                where = f" --data-root {args.data_root}" if args.data_root else " (no --data-root)"
                out.append(f"--dataset {args.dataset}{where}: {exc}")
    return out


def main(args) -> int:
    """``bnsuite bench``: exit 2 with every :func:`problems` line before anything is built."""
    import sys

    if args.devices is None:  # --nproc N without --devices: N devices, one per process
        args.devices = args.nproc
    found = problems(args)
    if found:
        for p in found:
            print(f"bnsuite bench: {p}", file=sys.stderr)
        return 2
    cell = bench_cell(
        args.method,
        args.backbone,
        args.image_size,
        args.batch_size,
        args.student_bn,
        args.teacher_bn,
        args.devices,
        args.nproc,
        args.precision,
        args.channels_last,
    )
    cell = replace(
        cell,
        dataset=replace(cell.dataset, name=args.dataset, root=args.data_root),
        cifar_stem=args.cifar_stem,
    )
    result = run_bench(
        cell,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        reference=args.reference,
        data_batches=args.data,
        data_root=args.data_root,
    )
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    return 0
