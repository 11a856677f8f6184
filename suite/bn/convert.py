"""The strategy registry and ``convert_bn``: swap every BatchNorm for a strategy's layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from suite.bn.momentum import MomentumBatchNorm1d, MomentumBatchNorm2d
from suite.bn.split import SplitBatchNorm1d, SplitBatchNorm2d
from suite.bn.sync import SyncBatchNorm1d, SyncBatchNorm2d

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class BNOptions:
    devices: int = 1
    total_steps: int | None = None
    views_per_step: int = 2
    variance: str = "official"
    history: str = "per_device"


def _is_1d(bn: _BN) -> bool:
    return isinstance(bn, (nn.BatchNorm1d, SplitBatchNorm1d, MomentumBatchNorm1d, SyncBatchNorm1d))


def _local(bn: _BN, o: BNOptions) -> _BN:
    cls = SplitBatchNorm1d if _is_1d(bn) else SplitBatchNorm2d
    return cls(bn.num_features, o.devices, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)


def _sync(bn: _BN, o: BNOptions) -> _BN:
    cls = SyncBatchNorm1d if _is_1d(bn) else SyncBatchNorm2d
    return cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)


def _momentum(bn: _BN, o: BNOptions) -> _BN:
    if o.total_steps is None:
        raise ValueError("the 'momentum' strategy needs total_steps (the run's training steps)")
    cls = MomentumBatchNorm1d if _is_1d(bn) else MomentumBatchNorm2d
    return cls(
        bn.num_features,
        bn.eps,
        total_steps=o.total_steps,
        views_per_step=o.views_per_step,
        variance=o.variance,
        devices=o.devices,
        affine=bn.affine,
        history=o.history,
    )


# name → factory(old BN layer, options) -> new layer. ShuffleBN uses per-device layers; the
# method shuffles the teacher's batch around the forward (suite.bn.shuffle).
STRATEGIES: dict[str, Callable[[_BN, BNOptions], _BN]] = {
    "local": _local,
    "sync": _sync,
    "momentum": _momentum,
    "shuffle": _local,
}


def _copy_state(old: _BN, new: _BN) -> None:
    with torch.no_grad():
        if old.affine and new.affine:
            new.weight.copy_(old.weight)
            new.bias.copy_(old.bias)
        if old.running_mean is not None and new.running_mean is not None:
            new.running_mean.copy_(old.running_mean)
            new.running_var.copy_(old.running_var)
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    new.to(device=old.weight.device if old.affine else old.running_mean.device)
    new.train(old.training)


def _replacement(old: _BN, strategy: str, o: BNOptions) -> _BN:
    new = STRATEGIES[strategy](old, o)
    _copy_state(old, new)
    if strategy == "momentum":
        # The step counter k of MomentumBN counts committed steps, not the old layer's forwards.
        # (The copied history is overwritten at the first commit, where β = 1.)
        new.restart_schedule()
    if hasattr(old, "act") and hasattr(old, "drop"):  # timm's BatchNormAct2d: BN + drop + act
        return _NormAct(new, old.drop, old.act)
    return new


class _NormAct(nn.Module):
    """Keeps timm's BatchNormAct2d behaviour (BN, then dropout, then activation) around our BN."""

    def __init__(self, bn: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.bn, self.drop, self.act = bn, drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.bn(x)))


def convert_bn(
    module: nn.Module,
    strategy: str,
    *,
    devices: int = 1,
    total_steps: int | None = None,
    views_per_step: int = 2,
    variance: str = "official",
    history: str = "per_device",
) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` (in place) by ``strategy``'s layer.

    Affine parameters and running buffers are copied, so a model in eval mode computes the same
    outputs before and after conversion (a fresh model's buffers are mean 0 / variance 1, the
    official MomentumBN start). MomentumBN's step counter starts at 0 and each of its histories
    (``history``: ``per_device``, one per emulated device, or ``shared``) starts from the copied
    running buffers. timm's ``BatchNormAct2d``
    keeps its dropout and activation around the new layer. Returns ``module`` (or the new layer
    if ``module`` is itself a BatchNorm).

    >>> teacher = convert_bn(deepcopy(net), "momentum", total_steps=1000)  # doctest: +SKIP
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown BN strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    options = BNOptions(devices, total_steps, views_per_step, variance, history)
    if isinstance(module, _BN):
        return _convert_one(module, strategy, options)
    for name, child in list(module.named_children()):
        if isinstance(child, _BN):
            setattr(module, name, _convert_one(child, strategy, options))
        else:
            convert_bn(
                child,
                strategy,
                devices=devices,
                total_steps=total_steps,
                views_per_step=views_per_step,
                variance=variance,
                history=history,
            )
    return module


def _convert_one(old: _BN, strategy: str, options: BNOptions) -> nn.Module:
    return _replacement(old, strategy, options)
