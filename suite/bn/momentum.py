"""``momentum``: MomentumBN, the teacher's BN statistics as a moving average over training steps.

Momentum² Teacher (Li, Liu, Sun 2021, arXiv 2101.07525), with the official code's semantics.
Per layer, at training step k of K, with β_k = (cos(π·k/K) + 1)/2 (1 at the start, 0 at the end)
and the history (μ_{k−1}, σ²_{k−1}) held in ``running_mean``/``running_var``:

    μ̂ = β_k·μ_B + (1 − β_k)·μ_{k−1},      σ̂² = β_k·s²_B + (1 − β_k)·σ²_{k−1},
    y  = γ·(x − μ̂)/sqrt(σ̂² + ε) + b        (statistics detached),

where μ_B is the view's batch mean and s²_B its variance in the chosen convention:

* ``variance="official"`` — the official code takes ``torch.var`` (already unbiased) and multiplies
  by n/(n−1) again: s²_B = (n/(n−1))²·σ²_biased, for normalisation *and* the history
  (n = N·H·W per device; n = N for 1-D layers). This is the default, for exact reproduction.
* ``variance="standard"`` — σ²_biased for normalisation and σ²_biased·n/(n−1) for the history, as
  ``nn.BatchNorm`` does (at β = 1 the output is then train-mode ``nn.BatchNorm``'s).

**Lazy update.** Every view of a step is normalised with the *same* history_{k−1}; only after
``views_per_step`` training-mode forwards does the layer commit

    history_k = β_k·mean_over_views(stats) + (1 − β_k)·history_{k−1},   k ← k + 1,

so the second view's normalisation never contains the first view's statistics. The history starts
at mean 0 / variance 1 (irrelevant at k = 0, where β = 1). Eval mode normalises with the history.

**Devices.** With ``devices=D`` the batch is cut into D contiguous chunks (chunk d = the samples
DDP rank d would hold). ``history="per_device"`` (the default; what DDP and the official code
compute, which never reduce the history across GPUs) keeps D histories, ``device_mean`` /
``device_var`` of shape [D, C]: chunk d is normalised with its own statistics mixed with
history d, and history d is updated from chunk d's statistics alone,

    history_{d,k} = β_k·mean_over_views(stats of chunk d) + (1 − β_k)·history_{d,k−1}.

``running_mean`` / ``running_var`` hold device 0's history — what eval mode normalises with and
what the official evaluation uses (the checkpoint rank 0 saves). ``history="shared"`` (an
ablation) keeps one history for all chunks, updated with the mean over chunks (and views): far
less noisy than D per-device histories, so it is *not* what D GPUs compute. Under DDP with P
processes each layer has ``devices = D/P`` (its process's share) and keeps that many histories.

The step counter (``num_batches_tracked`` = completed steps k) and the pending statistics of the
views seen so far in the current step are buffers, so ``state_dict`` resumes the schedule exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from suite.bn.dims import OneD, TwoD
from suite.bn.functional import acc_dtype, batch_norm_eval, group_stats, grouped
from suite.bn.views import ViewAware

VARIANCES = ("official", "standard")
HISTORIES = ("per_device", "shared")


class _MomentumBatchNorm(nn.modules.batchnorm._BatchNorm, ViewAware):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        total_steps: int,
        views_per_step: int = 2,
        variance: str = "official",
        devices: int = 1,
        affine: bool = True,
        history: str = "per_device",
    ) -> None:
        super().__init__(num_features, eps, None, affine, track_running_stats=True)
        if total_steps is None or int(total_steps) < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if views_per_step < 1:
            raise ValueError(f"views_per_step must be >= 1, got {views_per_step}")
        if variance not in VARIANCES:
            choices = ", ".join(VARIANCES)
            raise ValueError(f"variance={variance!r} is not valid; choose from {choices}")
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        if history not in HISTORIES:
            choices = ", ".join(HISTORIES)
            raise ValueError(f"history={history!r} is not valid; choose from {choices}")
        self.history = history
        self.total_steps = int(total_steps)
        self.views_per_step = views_per_step
        self.variance = variance
        self.devices = devices
        self.views = 1
        rows = self.history_rows
        # History h of [H, C] (H = devices per_device, 1 shared); row 0 mirrors running_*.
        self.register_buffer("device_mean", torch.zeros(rows, num_features))
        self.register_buffer("device_var", torch.ones(rows, num_features))
        self.register_buffer("pending_mean", torch.zeros(rows, num_features))
        self.register_buffer("pending_var", torch.zeros(rows, num_features))
        self.register_buffer("pending_views", torch.tensor(0, dtype=torch.long))
        # Host-side mirrors of the two counters: reading a CUDA buffer with .item() would stall
        # the CPU until the GPU catches up, several times per layer per step. The buffers stay
        # the truth for state_dict; _load_from_state_dict refreshes the mirrors.
        self._k = 0
        self._pending = 0

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, total_steps={self.total_steps}, "
            f"views_per_step={self.views_per_step}, variance={self.variance!r}, "
            f"devices={self.devices}, history={self.history!r}"
        )

    @property
    def history_rows(self) -> int:
        """Number of histories H: ``devices`` (per_device) or 1 (shared)."""
        return self.devices if self.history == "per_device" else 1

    @property
    def step(self) -> int:
        """Completed steps k (history commits)."""
        return self._k

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._k = int(self.num_batches_tracked.item())
        self._pending = int(self.pending_views.item())

    def restart_schedule(self) -> None:
        """k = 0 and no pending views; every history row ← ``running_mean``/``running_var``
        (after copying another layer's buffers into them)."""
        with torch.no_grad():
            self.device_mean.copy_(self.running_mean.expand_as(self.device_mean))
            self.device_var.copy_(self.running_var.expand_as(self.device_var))
            self.num_batches_tracked.zero_()
            self.pending_views.zero_()
            self.pending_mean.zero_()
            self.pending_var.zero_()
        self._k = self._pending = 0

    @property
    def batch_weight(self) -> float:
        """β for the next forward: (cos(π·k/K) + 1)/2, k clamped to K."""
        k = min(self.step, self.total_steps)
        return (math.cos(math.pi * k / self.total_steps) + 1.0) / 2.0

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return batch_norm_eval(self, x)
        views, devices = self.views, self.devices
        pending = self._pending
        if pending + views > self.views_per_step:
            raise ValueError(
                f"MomentumBatchNorm: {views} view(s) in this forward after {pending} pending would "
                f"cross a step boundary (views_per_step={self.views_per_step})"
            )
        groups = views * devices
        beta = self.batch_weight
        with torch.no_grad():
            mean, var_biased, n = group_stats(x, groups)  # [G, C]
            bessel = n / max(n - 1, 1)
            if self.variance == "official":
                var_norm = var_biased * bessel * bessel
                var_hist = var_norm
            else:
                var_norm = var_biased
                var_hist = var_biased * bessel
            acc = acc_dtype(x)
            # group g = view·D + device: history row `device` (per_device) or row 0 (shared)
            hist_mean = self.device_mean.to(acc).repeat(views if self.history_rows > 1 else 1, 1)
            hist_var = self.device_var.to(acc).repeat(views if self.history_rows > 1 else 1, 1)
            mu = beta * mean + (1.0 - beta) * hist_mean
            sigma2 = beta * var_norm + (1.0 - beta) * hist_var
            scale = torch.rsqrt(sigma2 + self.eps)  # [G, C]
        w = self.weight.to(acc) if self.weight is not None else None
        b = self.bias.to(acc) if self.bias is not None else None
        scale_w = scale if w is None else scale * w
        shift = -mu * scale_w if b is None else b - mu * scale_w
        y = torch.addcmul(
            shift[:, None, :, None], grouped(x, groups).to(acc), scale_w[:, None, :, None]
        )
        self._accumulate(mean, var_hist, views, devices, beta)
        return y.reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def _accumulate(self, mean: Tensor, var: Tensor, views: int, devices: int, beta: float) -> None:
        """Add this forward's views to the pending statistics; commit after views_per_step.

        Pending (and history) row d collects chunk d's statistics summed over views
        (per_device), or the mean over chunks summed over views (shared).
        """
        per_view = (mean.view(views, devices, -1), var.view(views, devices, -1))  # [V, D, C]
        if self.history_rows == 1:
            per_view = tuple(t.mean(1, keepdim=True) for t in per_view)  # [V, 1, C]
        self.pending_mean.add_(per_view[0].sum(0).to(self.pending_mean.dtype))
        self.pending_var.add_(per_view[1].sum(0).to(self.pending_var.dtype))
        self.pending_views.add_(views)
        self._pending += views
        if self._pending == self.views_per_step:
            count = float(self.views_per_step)
            self.device_mean.mul_(1.0 - beta).add_(self.pending_mean / count, alpha=beta)
            self.device_var.mul_(1.0 - beta).add_(self.pending_var / count, alpha=beta)
            self.running_mean.copy_(self.device_mean[0])  # device 0's history: eval, checkpoint
            self.running_var.copy_(self.device_var[0])
            self.num_batches_tracked.add_(1)
            self.pending_mean.zero_()
            self.pending_var.zero_()
            self.pending_views.zero_()
            self._k += 1
            self._pending = 0


class MomentumBatchNorm1d(OneD, _MomentumBatchNorm):
    """MomentumBN for [N, C] or [N, C, L] input (the projector's BN)."""


class MomentumBatchNorm2d(TwoD, _MomentumBatchNorm):
    """MomentumBN for [N, C, H, W] input."""
