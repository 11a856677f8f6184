"""The teacher–student machinery, written once: heads, EMA teacher, schedules, BN strategies.

A method subclasses :class:`TeacherStudent` (template method) and supplies its heads
(:meth:`~TeacherStudent.build_heads`) and its loss (:meth:`~TeacherStudent.compute_loss`); the base
class builds ``student = Student(Encoder(backbone, projector), predictor)`` and
``teacher = deepcopy(student.encoder)`` (no gradients), converts each side's BatchNorm layers to the
cell's strategy, and runs one training step as

1. ``m_k = momentum_at(k)``; ``θ_t ← m_k·θ_t + (1 − m_k)·θ_s`` over parameters only (each side keeps
   its own BN buffers) — *before* step k's forward, as in BYOL and M2T;
2. the method's forwards and loss (returned; the loop runs backward and the optimiser).

Views go through BN as the official code forwards them — each view on its own — but in one fused
forward: the views are concatenated and every suite BN layer is told (``concat_views``) to treat
each view's block separately, which equals separate forwards (tested).

DDP: only the student receives gradients, so the loop wraps only the student, after moving the
method to its device::

    method = build_method(cell, total_steps=K, num_ssl_samples=N).to(device)
    method.wrap_student(lambda m: DistributedDataParallel(m, device_ids=[local_rank]))

The student is then called once per step (the fused path); the teacher stays unwrapped (its BN
buffers, MomentumBN's history included, are per process, as in the official code); the state dict
keeps the unwrapped names.

Emulation == DDP (tested, ``tests/test_emulation_equals_ddp.py``): one process with
``devices = D`` computes what P processes with ``devices = D/P`` each compute — losses, student
parameters, teacher outputs and BN buffers — because every per-device quantity is kept per
emulated device: batch statistics per chunk, one MomentumBN history per device (``bn_history:
per_device``), and running statistics that follow device 0, as DDP's ``broadcast_buffers=True``
leaves them in the student and as rank 0 saves them for the teacher (``suite.bn.split``).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from suite.bn import (
    MomentumBatchNorm1d,
    MomentumBatchNorm2d,
    concat_views,
    convert_bn,
    shuffle_batch,
    unshuffle_batch,
)
from suite.cell import ENCODERS, HISTORIES, STRATEGIES, VARIANCES, CellConfig, MethodConfig
from suite.models import build_backbone
from suite.recipes import MOMENTUM_SCHEDULES, recipe

STUDENT_STRATEGIES = ("local", "sync")  # momentum and shuffle are teacher-only
SCHEDULES = MOMENTUM_SCHEDULES
MOMENTUM_BN = (MomentumBatchNorm1d, MomentumBatchNorm2d)
T = TypeVar("T")


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's teacher momentum ``m_k = 1 − (1 − m0)·(cos(π·k/K) + 1)/2``: m0 at k=0, 1 at k=K."""
    k = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


def world_size() -> int:
    """Number of processes in the default process group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def validate_bn(
    student_bn: str, teacher_bn: str, variance: str, history: str = "per_device"
) -> None:
    """Raise ValueError for a strategy a side cannot use (momentum/shuffle are teacher-only)."""
    if student_bn not in STUDENT_STRATEGIES:
        why = (
            " is teacher-only (the student needs gradients through its own batch statistics)"
            if student_bn in STRATEGIES
            else " is not a BN strategy"
        )
        raise ValueError(
            f"student_bn: {student_bn!r}{why}; valid choices: {', '.join(STUDENT_STRATEGIES)}"
        )
    if teacher_bn not in STRATEGIES:
        raise ValueError(
            f"teacher_bn: {teacher_bn!r} is not a BN strategy; "
            f"valid choices: {', '.join(STRATEGIES)}"
        )
    if variance not in VARIANCES:
        raise ValueError(f"bn_variance: {variance!r}; valid choices: {', '.join(VARIANCES)}")
    if history not in HISTORIES:
        raise ValueError(f"bn_history: {history!r}; valid choices: {', '.join(HISTORIES)}")


class Encoder(nn.Module):
    """``projector(backbone(x))``: the part of the student that the teacher copies."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


class Student(nn.Module):
    """``predictor(encoder(x))``; the predictor is the identity for methods without one."""

    def __init__(self, encoder: Encoder, predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor if predictor is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.encoder(x))


class TeacherStudent(nn.Module, abc.ABC):
    """A student trained by gradient and a teacher that follows it by EMA (BYOL, M2T, MoCo v2).

    ``fuse_views`` (default True) forwards a step's views in one call per side; False forwards
    each view separately — the reference the fused path is tested against (one student call per
    view, so not for DDP).
    """

    name: ClassVar[str]  # its recipe: suite.recipes.RECIPES[name] (defaults of every kind)

    def __init__(self, cell: CellConfig, *, total_steps: int, num_ssl_samples: int) -> None:
        super().__init__()
        validate_bn(cell.student_bn, cell.teacher_bn, cell.bn_variance, cell.bn_history)
        if total_steps < 1:
            raise ValueError(f"total_steps: {total_steps}; must be a positive number of steps")
        world = world_size()
        if cell.devices < 1 or cell.devices % world:
            raise ValueError(
                f"devices: {cell.devices} must be a positive multiple of the process count {world}"
            )
        if cell.batch_size % cell.devices:
            raise ValueError(
                f"batch_size: {cell.batch_size} is not divisible by devices={cell.devices} "
                "(every emulated device gets an equal share of each view)"
            )
        self.cell, self.total_steps = cell, total_steps
        self.recipe = recipe(self.name)
        self.base_momentum = or_default(cell.method.base_momentum, self.recipe.base_momentum)
        if not 0.0 <= self.base_momentum <= 1.0:
            raise ValueError(f"method.base_momentum: {self.base_momentum}; must lie in [0, 1]")
        schedule = or_default(cell.method.momentum_schedule, self.recipe.momentum_schedule)
        if schedule not in SCHEDULES:
            raise ValueError(
                f"method.momentum_schedule: {schedule!r}; valid choices: {', '.join(SCHEDULES)}"
            )
        self.momentum_schedule = schedule
        self.fuse_views = True  # False: one forward per view (the reference path; not DDP-safe)

        backbone, dim = build_backbone(
            cell.backbone, image_size=cell.dataset.image_size, cifar_stem=cell.cifar_stem
        )
        projector, predictor = self.build_heads(dim, cell.method)
        self.student = Student(Encoder(backbone, projector), predictor)
        self.teacher = copy.deepcopy(self.student.encoder)
        devices = cell.devices // world
        convert_bn(self.student, cell.student_bn, devices=devices)
        convert_bn(
            self.teacher,
            cell.teacher_bn,
            devices=devices,
            total_steps=total_steps,
            views_per_step=self.teacher_views_per_step(cell.method),
            variance=cell.bn_variance,
            history=cell.bn_history,
        )
        self.teacher.requires_grad_(False)  # after convert_bn, whose new layers train by default
        self._check_parameter_pairs()
        # Plain attributes, not sub-modules (kept out of state_dict and module traversal):
        # the student's forward (replaced by a DDP wrapper in wrap_student) and the teacher's first
        # MomentumBN layer (its β is logged), if any.
        self.__dict__["_student_call"] = self.student
        self.__dict__["_momentum_layer"] = next(
            (m for m in self.teacher.modules() if isinstance(m, MOMENTUM_BN)), None
        )

    # -- the method's parts (template methods) ----------------------------------------------------
    @abc.abstractmethod
    def build_heads(self, dim: int, cfg: MethodConfig) -> tuple[nn.Module, nn.Module | None]:
        """Return ``(projector, predictor or None)`` for a backbone of width ``dim``."""

    @abc.abstractmethod
    def compute_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Forward both sides and return the loss and method-specific logs."""

    def teacher_views_per_step(self, cfg: MethodConfig) -> int:
        """How many views the teacher forwards per step (MomentumBN's lazy-update period)."""
        return 2

    # -- teacher by EMA ---------------------------------------------------------------------------
    def momentum_at(self, step: int) -> float:
        """Teacher momentum for step ``step``: cosine from m0 to 1 over the cell, or constant m0."""
        if self.momentum_schedule == "constant":
            return self.base_momentum
        return cosine_momentum(step, self.total_steps, self.base_momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``θ_t ← m·θ_t + (1 − m)·θ_s`` over parameters (not buffers), as two fused foreach ops."""
        teacher = list(self.teacher.parameters())
        student = list(self.student.encoder.parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)

    def _check_parameter_pairs(self) -> None:
        t = [p.shape for p in self.teacher.parameters()]
        s = [p.shape for p in self.student.encoder.parameters()]
        if t != s:
            raise RuntimeError(
                "teacher and student parameters do not pair up after BN conversion "
                f"({len(t)} vs {len(s)} tensors); the EMA needs the same layout on both sides"
            )

    # -- forwards ---------------------------------------------------------------------------------
    def forward_student(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Student outputs for each view, each view normalised by its own BN statistics."""
        return self._forward_views(self._student_call, self.student, views, shuffle=False)

    @torch.no_grad()
    def forward_teacher(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Teacher outputs for each view in call order (ShuffleBN: each view's batch permuted)."""
        shuffle = self.cell.teacher_bn == "shuffle"
        return self._forward_views(self.teacher, self.teacher, views, shuffle=shuffle)

    def _forward_views(
        self,
        call: Callable[[Tensor], Tensor],
        bn_owner: nn.Module,
        views: Sequence[Tensor],
        *,
        shuffle: bool,
    ) -> list[Tensor]:
        views = list(views)
        handles = []
        if shuffle:  # ShuffleBN: permute each view's batch (across processes when in a group)
            for i, v in enumerate(views):
                views[i], handle = shuffle_batch(v)
                handles.append(handle)
        if self.fuse_views and len(views) > 1:
            with concat_views(bn_owner, len(views)):
                outs = list(call(torch.cat(views)).chunk(len(views)))
        else:
            outs = [call(v) for v in views]
        if shuffle:
            outs = [unshuffle_batch(o, h) for o, h in zip(outs, handles, strict=True)]
        return outs

    # -- the loop's interface ---------------------------------------------------------------------
    def training_step(
        self, view1: Tensor, view2: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """EMA update with ``m_step``, forwards and loss; returns ``(loss, logs)``.

        Logs: ``loss`` (a detached 0-dim tensor on the device: converting it to a float here would
        synchronise a CUDA stream every step; the loop reads it where it logs), ``teacher_momentum``
        and, with a MomentumBN teacher, ``teacher_bn_beta`` (β of the teacher's first BN layer used
        in this step's forwards, a host value), plus the method's own.
        """
        momentum = self.momentum_at(step)
        self.update_teacher(momentum)
        logs = {"teacher_momentum": momentum}
        if self._momentum_layer is not None:
            logs["teacher_bn_beta"] = float(self._momentum_layer.batch_weight)
        loss, extra = self.compute_loss(view1, view2)
        logs["loss"] = loss.detach()
        logs.update(extra)
        return loss, logs

    def wrap_student(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Route the student's forwards through ``wrap(student)`` (e.g. DistributedDataParallel).

        The wrapper is not registered as a sub-module, so ``state_dict`` keeps the plain names.
        """
        self.__dict__["_student_call"] = wrap(self.student)

    def encoder(self, which: str) -> nn.Module:
        """The backbone to evaluate: the student's (online) or the teacher's."""
        if which == "student":
            return self.student.encoder.backbone
        if which == "teacher":
            return self.teacher.backbone
        raise ValueError(f"eval.encoder: {which!r}; valid choices: {', '.join(ENCODERS)}")

    def student_parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser trains (backbone, projector, predictor of the student)."""
        return list(self.student.parameters())


def or_default(value: T | None, default: T) -> T:
    """``value`` unless it is None ("the method's standard value")."""
    return default if value is None else value
