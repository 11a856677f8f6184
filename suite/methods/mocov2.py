"""MoCo v2 (Chen et al. 2020): a query encoder, a momentum key encoder and a queue of negatives.

    q = normalize(student(x1)),  k = normalize(teacher(x2))     (teacher = key encoder by EMA)
    logits = [⟨q, k⟩, ⟨q, queue_j⟩ for j < K] / T,  loss = cross_entropy(logits, 0)   (InfoNCE)

then the keys of the whole global batch (gathered from every process) replace the queue's oldest
B rows. ``symmetric`` (MoCo's own symmetric variant, its CIFAR demo / MoCo v3): also
``q2 = student(x2)`` against ``k' = teacher(x1)``, loss = the *sum* of the two InfoNCE terms,
and both keys are enqueued, ``cat([k', k])`` = teacher(x1) then teacher(x2) of the global batch
(2B rows per step).

Defaults (MoCo v2): head Linear(d, d)–ReLU–Linear(d, 128) (no BN), T = 0.2, constant key-encoder
momentum 0.999 (``method.momentum_schedule: cosine`` opts into BYOL's schedule), queue 65536,
ShuffleBN on the key encoder (the recipe, ``suite.recipes.RECIPES["mocov2"]``).

Queue length: ``K = min(queue_size, ⌊N / B⌋·R)`` for N SSL samples, global batch B and R keys per
step (B, or 2B symmetric), so a small data set never holds more keys than one epoch delivers (the
loader drops the last partial batch). K must be a multiple of R (every step writes R rows at a
pointer that stays a multiple of R). A queue longer than half the SSL set is warned about: its
negatives then include many images' own earlier keys.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from suite.cell import CellConfig, MethodConfig
from suite.methods.base import TeacherStudent, or_default, world_size
from suite.models import MLPHead
from suite.recipes import recipe

log = logging.getLogger(__name__)


def queue_length(
    queue_size: int, global_batch: int, num_ssl_samples: int, keys_per_step: int | None = None
) -> int:
    """``min(queue_size, ⌊N/B⌋·R)`` with R = ``keys_per_step`` (default B); ValueError when the
    result is not a positive multiple of R."""
    per_step = keys_per_step or global_batch
    fit = (num_ssl_samples // global_batch) * per_step
    if fit == 0:
        raise ValueError(
            f"method.queue_size: the data set has {num_ssl_samples} samples, fewer than one global "
            f"batch of {global_batch}; MoCo's queue needs at least one batch of keys"
        )
    if queue_size > fit:
        return fit
    if queue_size < 1 or queue_size % per_step:
        what = "global batch" if per_step == global_batch else "keys per step (2 x batch)"
        raise ValueError(
            f"method.queue_size: {queue_size} is not a positive multiple of the {what} "
            f"{per_step}; choose e.g. {max(1, queue_size // per_step) * per_step}"
        )
    return queue_size


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``CE([⟨q̂, k̂⟩, q̂·queueᵀ] / T, 0)``: positive logit first, the queue's rows as negatives."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.to(q.dtype).T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def gather_keys(keys: Tensor) -> Tensor:
    """Concatenate ``keys`` of every process in rank order (identity without a process group)."""
    if world_size() == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


class MoCoV2(TeacherStudent):
    """MoCo v2: InfoNCE of queries against momentum keys and a queue of past keys."""

    name = "mocov2"

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, cell: CellConfig, *, total_steps: int, num_ssl_samples: int) -> None:
        super().__init__(cell, total_steps=total_steps, num_ssl_samples=num_ssl_samples)
        if cell.method.temperature <= 0:
            raise ValueError(f"method.temperature: {cell.method.temperature}; must be > 0")
        self.temperature = cell.method.temperature
        self.symmetric = cell.method.symmetric
        keys = cell.batch_size * (2 if self.symmetric else 1)
        size = queue_length(cell.method.queue_size, cell.batch_size, num_ssl_samples, keys)
        if size > num_ssl_samples / 2:
            log.warning(
                "method.queue_size: the queue holds %d keys, more than half of the %d SSL samples; "
                "many negatives are earlier keys of the query's own image (choose a smaller "
                "queue_size)",
                size,
                num_ssl_samples,
            )
        dim = self.teacher.projector.out_dim
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def build_heads(self, dim: int, cfg: MethodConfig) -> tuple[nn.Module, nn.Module | None]:
        if cfg.pred_hidden is not None:
            raise ValueError(
                f"method.pred_hidden: {cfg.pred_hidden}; MoCo v2 has no predictor (leave it null)"
            )
        r = recipe(self.name)
        hidden = or_default(cfg.proj_hidden, r.proj_hidden or dim)
        return MLPHead(dim, hidden, or_default(cfg.proj_dim, r.proj_dim), bn=False), None

    def teacher_views_per_step(self, cfg: MethodConfig) -> int:
        return 2 if cfg.symmetric else 1

    def compute_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, float]]:
        queue = self.queue.clone()  # the enqueue below must not touch what backward reads
        if self.symmetric:
            q1, q2 = self.forward_student([view1, view2])
            k, k_prime = self.forward_teacher([view2, view1])
            loss = info_nce(q1, k, queue, self.temperature) + info_nce(
                q2, k_prime, queue, self.temperature
            )
            self.enqueue(F.normalize(k_prime, dim=1), F.normalize(k, dim=1))
            return loss, {}
        else:
            (q1,) = self.forward_student([view1])
            (k,) = self.forward_teacher([view2])
            loss = info_nce(q1, k, queue, self.temperature)
        self.enqueue(F.normalize(k, dim=1))
        return loss, {}

    @torch.no_grad()
    def enqueue(self, *keys: Tensor) -> None:
        """Write the global batch of each key tensor in turn at ``queue_ptr``; ``ptr ← (ptr + R)
        mod K`` for R rows in all (no sync). Each tensor is gathered over processes on its own,
        so the row order is the same with DDP as with emulated devices."""
        keys = torch.cat([gather_keys(k.detach()) for k in keys])
        size, n = self.queue.shape[0], keys.shape[0]
        if size % n:
            raise RuntimeError(f"queue length {size} is not a multiple of the {n} keys of a step")
        rows = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
