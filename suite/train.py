"""Train and evaluate one cell: data → method → loop (schedules, EMA, timers, checkpoints) → probes.

One process emulates ``cell.devices`` devices for BN statistics; under ``torchrun`` each of the
``cell.nproc`` processes holds ``batch_size / nproc`` samples of every view and the student is
wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA).

Per iteration k (0-based) of K = epochs × steps_per_epoch:
    lr_k    = warm-up from ``warmup_lr`` to ``lr_per_256·B/256`` over the warm-up steps, then
              cosine to 0 (timm's ``CosineLRScheduler``, per iteration);
    teacher   ← EMA with m_k (inside ``method.training_step``), then forwards, loss, backward, step.

Divergence stops the cell with :class:`TrainingDiverged` (the step and the tensor): a loss that is
not finite (checked every step: on the CPU on the host; on CUDA on the device, where the first
non-finite step is kept and read at the next logging or checkpoint step, so no step waits for the
host and the reason still names the step), and any parameter or buffer of
student or teacher (BN running statistics included) that breaks :mod:`suite.finite`'s rule —
NaN, inf or ``|x| >= 2**64`` — checked at every logging step, before every checkpoint (so a
diverged state is never saved) and before evaluation: one reduction per tensor and one host
synchronisation, never per step. The probes then refuse features that break the same rule.

A checkpoint (method, optimiser, step, and what the run has logged so far: the metric history, the
last logged values, the step timings) is written atomically every ``checkpoint_every`` steps and at
the end; a restart resumes from it, emits the history again (the new run gets the whole loss curve,
not only the resumed part), reports the last loss and the timings of every step trained, and, on
CPU, continues bit-identically (the data order and augmentations are a pure function of seed,
epoch and batch index). A cell killed during evaluation resumes at its last step and only
evaluates. A checkpoint that cannot be
read fails the cell with :class:`CheckpointError` naming the file; the cell's checkpoint files are
moved aside first, so the next run restarts the cell from step 0.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from suite import runtime
from suite.cell import CellConfig

ProgressFn = Callable[[int, int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The loss, a parameter, a buffer or the evaluated features broke the divergence rule of
    :mod:`suite.finite`; the message names the step and the tensor."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read; the message names it and what was done about it."""


def check_state(module: nn.Module, step: int, dinfo: runtime.Dist | None = None) -> None:
    """Raise :class:`TrainingDiverged` when a floating parameter or buffer of ``module`` breaks
    :mod:`suite.finite`'s rule (NaN, inf, ``|x| >= 2**64``) after ``step`` steps.

    One reduction per tensor and one host synchronisation; under DDP the verdict is all-reduced
    (MIN), so every rank stops together (a rank whose own tensors are fine says so).
    """
    from suite import finite

    named = [
        (name, tensor)
        for name, tensor in (*module.named_parameters(), *module.named_buffers())
        if tensor.is_floating_point()
    ]
    mask = finite.diverged_mask([t for _, t in named])
    healthy = (~mask.any()).to(torch.int32)
    if dinfo is not None and dinfo.world > 1:
        torch.distributed.all_reduce(healthy, op=torch.distributed.ReduceOp.MIN)
    if bool(healthy):
        return
    if bool(mask.any()):
        name, tensor = named[int(mask.nonzero()[0, 0])]
        what = f"{name} {tuple(tensor.shape)} ({finite.describe(tensor)})"
    else:
        what = "a tensor on another rank (this rank's are fine)"
    raise TrainingDiverged(
        f"at step {step}: {what} is diverged (rule: {finite.RULE}); the cell stops. "
        "Lower optimizer.lr_per_256 or check the data"
    )


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none).

    A file that torch cannot read, or that is not a checkpoint, raises :class:`CheckpointError`
    after every ``checkpoint*.pt`` of its folder (all ranks' files, so that no rank resumes while
    another restarts) has been renamed to ``<name>.corrupt-<time>``: the next run restarts the cell
    from step 0, and the bad file is kept for inspection.
    """
    try:
        state = runtime.load_checkpoint(path)
        if state is not None and not (isinstance(state, dict) and {"step", "method"} <= set(state)):
            raise ValueError("it is not a bnsuite checkpoint (no 'step' and 'method' entries)")
    except Exception as exc:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = []
        for file in sorted(path.parent.glob("checkpoint*.pt")):
            target = file.with_name(f"{file.name}.corrupt-{stamp}")
            try:
                file.rename(target)
                moved.append(target.name)
            except OSError:
                pass
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); moved aside to "
            f"{', '.join(moved) or '(nothing: rename failed)'} in {path.parent}. Run the same "
            "command again to restart this cell from step 0"
        ) from exc
    return state


class LossWatch:
    """Every step's loss checked for finiteness, without a host read per step where that costs.

    ``deferred=False`` (CPU): :meth:`see` returns the loss as a float and raises
    :class:`TrainingDiverged` at once on a non-finite one. ``deferred=True`` (CUDA): :meth:`see`
    only records, on the device, the first step whose loss was not finite (no synchronisation);
    :meth:`read` (called at logging and checkpoint steps, before any state is saved) raises naming
    that step.
    """

    HINT = "the cell stops. Lower optimizer.lr_per_256 or check the data"

    def __init__(self, device: torch.device, deferred: bool) -> None:
        self.deferred = deferred
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, loss: torch.Tensor, step: int) -> float | None:
        if not self.deferred:
            value = float(loss)
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} at step {step}; {self.HINT}")
            return value
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        return None

    def read(self, step: int) -> None:
        at = int(self.first_bad)
        if at >= 0:
            raise TrainingDiverged(
                f"loss became non-finite at step {at} (read at step {step}); {self.HINT}"
            )


@dataclass
class StepTimer:
    """Time per step and the part of it the host spent waiting for the next batch.

    CPU: wall time from the start of the wait for a batch to the end of the optimiser step. CUDA:
    the same interval on the GPU's clock, bracketed by two CUDA events per step
    (:meth:`start` / :meth:`stop`) and never waited for in the step: :meth:`flush` reads the
    finished pairs after one synchronisation, where the loop synchronises anyway (logging and
    checkpoint steps, the end), so the host can run ahead of the GPU as in plain training.
    """

    step_s: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    cuda: bool = False
    _events: list[tuple[Any, Any]] = field(default_factory=list)
    _t0: float = 0.0

    def start(self) -> None:
        """Mark the start of a step (before its batch is fetched)."""
        self._t0 = time.perf_counter()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            if self._events and self._events[-1][1] is None:  # a start without a step (epoch end)
                self._events[-1] = (event, None)
            else:
                self._events.append((event, None))

    def stop(self, got_batch_at: float) -> None:
        """Mark the end of the step (after the optimiser step was issued)."""
        now = time.perf_counter()
        self.wait_s.append(got_batch_at - self._t0)
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1] = (self._events[-1][0], end)
        else:
            self.step_s.append(now - self._t0)

    def flush(self) -> None:
        """Convert the recorded CUDA event pairs to seconds (one synchronisation)."""
        done = [(a, b) for a, b in self._events if b is not None]
        if done:
            done[-1][1].synchronize()
            self.step_s.extend(a.elapsed_time(b) / 1e3 for a, b in done)
        self._events = [(a, b) for a, b in self._events if b is None]

    def state_dict(self) -> dict[str, Any]:
        """The timings so far (CUDA events read first), for a checkpoint."""
        self.flush()
        return {
            "step_s": torch.tensor(self.step_s, dtype=torch.float64),
            "wait_s": torch.tensor(self.wait_s, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_s = [float(v) for v in state["step_s"].tolist()]
        self.wait_s = [float(v) for v in state["wait_s"].tolist()]

    def summary(self, samples_per_step: int, skip: int) -> dict[str, float]:
        self.flush()
        steps = self.step_s[skip:] or self.step_s
        waits = self.wait_s[skip:] or self.wait_s
        if not steps:
            return {}
        median = statistics.median(steps)
        return {
            "step_ms": 1e3 * median,
            "images_per_s": samples_per_step / median,
            "data_wait_fraction": sum(waits) / max(sum(steps), 1e-12),
        }


def parameter_groups(cell: CellConfig, module: nn.Module) -> list[dict[str, Any]]:
    """The optimiser's parameter groups (BYOL's rule, ``optimizer.exclude_bn_and_bias``).

    With the exclusion on (the default): every parameter with ≤ 1 dimension — biases and the
    BatchNorm weights and biases — forms a group with ``weight_decay = 0``, which timm's LARS
    also leaves out of the trust-ratio adaptation (it adapts only where weight_decay ≠ 0); the
    weights (convolutions, linear layers) get ``optimizer.weight_decay`` and LARS adaptation.
    Off: one group, every parameter decayed (and adapted).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    decay = cell.optimizer.weight_decay
    if not cell.optimizer.exclude_bn_and_bias:
        return [{"params": params, "weight_decay": decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def build_optimizer(cell: CellConfig, params: list[nn.Parameter] | list[dict], world_batch: int):
    """SGD (momentum) or LARS (timm) with lr = lr_per_256 · B / 256; ``params`` a list of
    parameters (all decayed) or :func:`parameter_groups` (each group's own weight decay)."""
    lr = cell.optimizer.lr_per_256 * world_batch / 256
    if cell.optimizer.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=cell.optimizer.momentum,
            weight_decay=cell.optimizer.weight_decay,
        )
    if cell.optimizer.name == "lars":
        from timm.optim import Lars

        return Lars(
            params,
            lr=lr,
            momentum=cell.optimizer.momentum,
            weight_decay=cell.optimizer.weight_decay,
        )
    raise ValueError(f"optimizer.name: {cell.optimizer.name!r}; choose from sgd, lars")


def build_scheduler(cell: CellConfig, optimizer, total_steps: int, steps_per_epoch: int):
    """Per-iteration linear warm-up from ``warmup_lr`` then cosine to 0 (timm)."""
    from timm.scheduler import CosineLRScheduler

    warmup = min(
        int(round(cell.optimizer.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0)
    )
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warmup, 1),
        lr_min=0.0,
        warmup_t=warmup,
        warmup_lr_init=cell.optimizer.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def build_cell_data(cell: CellConfig, device: torch.device, dinfo: runtime.Dist | None = None):
    """The cell's dataset with its two views (:func:`suite.views.cell_views`: the file's resolved
    views, else its method's recipe and the dataset's defaults), the data checked first; under
    DDP, each process gets its own part of every global batch."""
    dinfo = dinfo or runtime.Dist()
    from suite.data import build_data
    from suite.views import aug_kind, cell_views

    return build_data(
        cell.dataset.name,
        root=cell.dataset.root,
        image_size=cell.dataset.image_size,
        aug=aug_kind(cell.method.name),
        batch_size=cell.batch_size,
        device=device,
        num_workers=cell.dataset.num_workers,
        seed=cell.seed,
        specs=cell_views(cell),
        rank=dinfo.rank,
        world=dinfo.world,
    )


def join_cell_job(cell: CellConfig, device: str) -> tuple[torch.device, runtime.Dist]:
    """The device this process runs ``cell`` on and its place in the job: joins the ``torchrun``
    process group when there is one (CUDA: this rank's local GPU); the job must have exactly
    ``cell.nproc`` processes."""
    dev = runtime.resolve_device(device)
    dinfo = runtime.init_distributed(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", dinfo.local_rank)
    if cell.nproc != dinfo.world:
        raise ValueError(
            f"nproc: the cell asks for {cell.nproc} processes but this job has {dinfo.world}"
            " (launch with torchrun --nproc-per-node)"
        )
    return dev, dinfo


def train_cell(
    cell: CellConfig,
    *,
    device: str = "auto",
    workdir: Path | str,
    progress: ProgressFn | None = None,
    log_metrics: Callable[[dict[str, float], int], None] | None = None,
    stop_at_step: int | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train ``cell`` (resuming from ``workdir/checkpoint.pt``), evaluate, return the metrics.

    ``stop_at_step`` interrupts after that many steps (as a crash would, checkpoint included);
    ``log_metrics(metrics, step)`` receives the loss and schedules every ``cell.log_every`` steps.
    """
    from suite.methods import build_method

    dev, dinfo = join_cell_job(cell, device)
    workdir = Path(workdir)
    start_time = time.perf_counter()
    runtime.seed_everything(cell.seed)
    data = build_cell_data(cell, dev, dinfo)
    steps_per_epoch = data.steps_per_epoch
    total_steps = cell.epochs * steps_per_epoch
    run_steps = min(total_steps, cell.max_steps) if cell.max_steps else total_steps

    runtime.seed_everything(cell.seed)  # model init independent of how the data was built
    method = build_method(cell, total_steps=total_steps, num_ssl_samples=data.num_ssl_samples)
    channels_last = runtime.use_channels_last(dev, cell.channels_last)
    method.to(dev, memory_format=torch.channels_last) if channels_last else method.to(dev)
    if dinfo.world > 1:
        method.wrap_student(
            lambda m: nn.parallel.DistributedDataParallel(
                m, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        )
    optimizer = build_optimizer(cell, parameter_groups(cell, method.student), cell.batch_size)
    scheduler = build_scheduler(cell, optimizer, total_steps, steps_per_epoch)

    # Each rank keeps its own file: the teacher's BN buffers (MomentumBN history) are per rank.
    ckpt_path = workdir / ("checkpoint.pt" if dinfo.is_main else f"checkpoint.rank{dinfo.rank}.pt")
    step = 0
    timer = StepTimer(cuda=dev.type == "cuda")
    shown: dict[str, float] = {}  # the latest host-side logs (on CUDA: of the last logging step)
    history: list[tuple[int, dict[str, float]]] = []  # what log_metrics was given, in order
    state = load_checkpoint(ckpt_path)
    if state is not None:
        if state.get("cell_id") != cell.cell_id:
            raise ValueError(
                f"checkpoint {ckpt_path} belongs to cell {state.get('cell_id')}, not {cell.cell_id}"
            )
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        step = int(state["step"])
        logged = state.get("logged") or {}  # absent in checkpoints of earlier versions
        history = [(int(at), dict(values)) for at, values in logged.get("history", [])]
        shown = dict(logged.get("shown", {}))
        if "timer" in logged:
            timer.load_state_dict(logged["timer"])
        if log_metrics is not None:
            for at, values in history:
                log_metrics(values, at)

    def save() -> None:
        logged = {
            "history": [[at, values] for at, values in history],
            "shown": {k: float(v) for k, v in shown.items()},
            "timer": timer.state_dict(),
        }
        runtime.save_atomic(
            {
                "cell_id": cell.cell_id,
                "step": step,
                "method": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "logged": logged,
            },
            ckpt_path,
        )
        if dinfo.world > 1:
            torch.distributed.barrier()

    checked_at = -1

    def check(at: int) -> None:
        nonlocal checked_at
        if at != checked_at:
            check_state(method, at, dinfo)
            checked_at = at

    runtime.reset_peak_memory(dev)
    method.train()
    watch = LossWatch(dev, deferred=dev.type == "cuda")
    resumed_at = step
    autocast = runtime.autocast_context(dev, cell.precision)
    while step < run_steps:
        epoch, start = divmod(step, steps_per_epoch)
        batches = data.ssl_epoch(epoch, start=start)
        timer.start()
        for view1, view2 in batches:
            t_got = time.perf_counter()
            if channels_last:
                view1 = view1.contiguous(memory_format=torch.channels_last)
                view2 = view2.contiguous(memory_format=torch.channels_last)
            scheduler.step_update(num_updates=step)
            with autocast:
                loss, logs = method.training_step(view1, view2, step)
            host_loss = watch.see(logs["loss"], step)
            if host_loss is not None:
                logs["loss"] = host_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            timer.stop(t_got)  # no host synchronisation: CUDA events, read at logging steps
            step += 1
            logs["lr"] = optimizer.param_groups[0]["lr"]
            logging_step = step % cell.log_every == 0 or step == run_steps
            checkpoint_step = step % cell.checkpoint_every == 0 or step == run_steps
            if watch.deferred and (logging_step or checkpoint_step):
                watch.read(step)  # the one host read of the loss flag, at a logging step
                logs["loss"] = float(logs["loss"])
            if not isinstance(logs["loss"], torch.Tensor):
                shown = logs
            if progress is not None:
                progress(step, run_steps, shown)
            if logging_step or checkpoint_step:
                check(step)  # before the save: a diverged state is never checkpointed
                timer.flush()  # check() has synchronised already
            if logging_step:
                values = {f"train/{k}": float(v) for k, v in shown.items()}
                history.append((step, values))
                if log_metrics is not None:
                    log_metrics(values, step)
            if checkpoint_step:
                save()
            if stop_at_step is not None and step >= stop_at_step:
                return {"interrupted_at": step}
            if step >= run_steps:
                break
            timer.start()

    metrics: dict[str, Any] = {"train/steps": step, "train/total_steps": total_steps}
    if shown:  # the last step is always a logging step: its loss
        metrics["train/loss_final"] = shown["loss"]
    samples_per_step = cell.batch_size
    metrics.update(timer.summary(samples_per_step, skip=min(2, max(len(timer.step_s) - 1, 0))))
    metrics["peak_memory_mb"] = runtime.peak_memory_mb(dev)
    metrics["train/resumed_at"] = resumed_at
    check(step)  # also when a resumed cell had no step left to train
    if evaluate and dinfo.is_main:
        from suite.probe import evaluate_cell

        metrics.update(evaluate_cell(cell, method, data, dev, channels_last))
    metrics["wall_time_s"] = time.perf_counter() - start_time
    return metrics
