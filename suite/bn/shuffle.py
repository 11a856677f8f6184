"""``shuffle``: ShuffleBN (MoCo, He et al. 2020) — the key batch is permuted across devices.

Per-device BN lets a query and its positive key share the same device's batch statistics, a
signal the contrastive task can cheat with. ShuffleBN forwards the key encoder on a permuted
batch so that each device's BN chunk holds other samples than the query encoder saw, then
restores the order:

    k = unshuffle(f_k(shuffle(x)))      with unshuffle(shuffle(x)) = x.

One process (emulated devices, contiguous chunks of N/D): a random permutation of the batch.
A process group: gather every rank's batch, permute the global batch with one permutation
broadcast from rank 0, give each rank its slice; the inverse gathers and takes back each rank's
original samples (MoCo's ``_batch_shuffle_ddp``). The distributed path carries no gradient
(the key encoder has none); the single-process path is a differentiable index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from suite.bn.sync import _active_group


@dataclass(frozen=True)
class ShuffleHandle:
    """What ``unshuffle_batch`` needs: the inverse permutation (global when distributed)."""

    inverse: Tensor
    rank: int = 0
    world: int = 1
    process_group: dist.ProcessGroup | None = None


def _gather(x: Tensor, pg: dist.ProcessGroup) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(parts, x.contiguous(), group=pg)
    return torch.cat(parts)


def shuffle_batch(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, ShuffleHandle]:
    """Permute the (global) batch; returns the permuted local batch and the handle to undo it."""
    pg = _active_group(process_group)
    if pg is None:
        perm = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
        return x[perm], ShuffleHandle(inverse=torch.argsort(perm))
    world, rank = dist.get_world_size(pg), dist.get_rank(pg)
    with torch.no_grad():
        everything = _gather(x.detach(), pg)
        perm = torch.randperm(everything.shape[0], generator=generator, device="cpu")
        perm = perm.to(x.device)
        dist.broadcast(perm, src=dist.get_global_rank(pg, 0), group=pg)
        n = x.shape[0]
        mine = perm[rank * n : (rank + 1) * n]
        return everything[mine], ShuffleHandle(torch.argsort(perm), rank, world, pg)


def unshuffle_batch(y: Tensor, handle: ShuffleHandle) -> Tensor:
    """Restore the original order of a batch produced from ``shuffle_batch``'s output."""
    if handle.process_group is None:
        return y[handle.inverse]
    with torch.no_grad():
        everything = _gather(y.detach(), handle.process_group)
        n = y.shape[0]
        mine = handle.inverse[handle.rank * n : (handle.rank + 1) * n]
        return everything[mine]
