"""``local``: per-device BatchNorm, with D devices emulated on one process ("split BN").

On D data-parallel devices each device normalises its own N/D samples. One process reproduces
that exactly by cutting the global batch into D contiguous chunks — chunk d holds samples
[d·N/D, (d+1)·N/D), the samples DDP rank d would see — and normalising each chunk with its own
statistics:

    y_i = γ·(x_i − μ_d)/sqrt(σ²_d + ε) + b   for sample i in chunk d   (σ²_d biased).

Running statistics (unbiased variance) are updated from device 0's chunk only: that is what DDP
leaves in the buffers rank 0 checkpoints and evaluates (a DDP-wrapped student with the default
``broadcast_buffers=True`` starts every forward from rank 0's buffers, so the other ranks'
updates are discarded; a teacher keeps per-process buffers and rank 0 saves its own). Averaging
the D chunks would be a less noisy estimate that no D-GPU run computes. (lightly's
SplitBatchNorm groups samples by stride instead — s, s+S, … — which is not what DDP ranks see.)
"""

from __future__ import annotations

from torch import Tensor, nn

from suite.bn.dims import OneD, TwoD
from suite.bn.functional import batch_norm_eval, batch_norm_train
from suite.bn.views import ViewAware


class _SplitBatchNorm(nn.modules.batchnorm._BatchNorm, ViewAware):
    def __init__(
        self,
        num_features: int,
        devices: int = 1,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        self.devices = devices
        self.views = 1

    def extra_repr(self) -> str:
        return super().extra_repr() + f", devices={self.devices}"

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training and self.track_running_stats:
            return batch_norm_eval(self, x)
        return batch_norm_train(self, x, self.devices, self.views)


class SplitBatchNorm1d(OneD, _SplitBatchNorm):
    """Per-device BatchNorm1d over ``devices`` contiguous chunks ([N, C] or [N, C, L] input)."""


class SplitBatchNorm2d(TwoD, _SplitBatchNorm):
    """Per-device BatchNorm2d over ``devices`` contiguous chunks of the batch ([N, C, H, W])."""
