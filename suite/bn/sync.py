"""``sync``: statistics over the global batch of all processes (SyncBatchNorm), on any backend.

    μ = Σ_p Σ_i x_pi / n,   σ² = Σ_p Σ_i (x_pi − μ)² / n   over every process p of the group,
    y = γ·(x − μ)/sqrt(σ² + ε) + b.

On CUDA in a process group with one view per forward, torch's own SyncBatchNorm kernel runs.
Elsewhere — gloo on CPU, which torch's implementation refuses, or several views in one
forward — the suite's grouped implementation runs: per-process statistics are pooled exactly
with one all-gather, and the backward all-reduces Σdy and Σdy·x̂ (see ``functional``).

Outside a process group (or with world size 1) it is plain BN over the whole local batch, which
for a global batch on one process with D emulated devices is exactly what SyncBN over D devices
computes.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

from suite.bn.dims import OneD, TwoD
from suite.bn.functional import batch_norm_eval, batch_norm_train, momentum_of
from suite.bn.views import ViewAware


def _active_group(group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """The process group to reduce over, or None when there is nothing to synchronise."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    pg = group if group is not None else dist.group.WORLD
    return pg if dist.get_world_size(pg) > 1 else None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm, ViewAware):
    """Cross-process BatchNorm (1-D or 2-D input) that also works on CPU with gloo.

    Not a subclass of ``nn.SyncBatchNorm``: DistributedDataParallel refuses modules holding one
    on CPU. On CUDA it calls the same autograd function torch's ``nn.SyncBatchNorm`` calls.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group
        self.views = 1

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training or not self.track_running_stats):
            return batch_norm_eval(self, x)
        pg = _active_group(self.process_group)
        if pg is not None and x.is_cuda and self.views == 1:
            return self._torch_cuda_sync(x, pg)
        return batch_norm_train(self, x, 1, self.views, pg)

    def _torch_cuda_sync(self, x: Tensor, pg: dist.ProcessGroup) -> Tensor:
        """torch's SyncBatchNorm kernel (the function behind ``nn.SyncBatchNorm`` on CUDA)."""
        from torch.nn.modules._functions import SyncBatchNorm as TorchSyncBatchNorm

        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = momentum_of(self)
        return TorchSyncBatchNorm.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.eps,
            factor,
            pg,
            dist.get_world_size(pg),
        )


class SyncBatchNorm1d(OneD, SyncBatchNorm):
    """Cross-process BatchNorm for [N, C] or [N, C, L] input."""


class SyncBatchNorm2d(TwoD, SyncBatchNorm):
    """Cross-process BatchNorm for [N, C, H, W] input."""
