"""BatchNorm-statistics strategies, as drop-in layers.

=========  ====================================================================================
local      per-device statistics; ``devices=D`` emulates D devices on one process (split BN)
sync       statistics over the global batch of all processes (SyncBN; gloo on CPU too)
momentum   MomentumBN: batch statistics mixed with the layer's own history, lazy update (teacher)
shuffle    per-device statistics on a batch permuted across devices (ShuffleBN; teacher / keys)
=========  ====================================================================================

>>> from suite.bn import convert_bn
>>> teacher = convert_bn(model, "momentum", total_steps=10_000, devices=8)   # doctest: +SKIP
"""

from suite.bn.convert import STRATEGIES, convert_bn
from suite.bn.momentum import MomentumBatchNorm1d, MomentumBatchNorm2d
from suite.bn.shuffle import ShuffleHandle, shuffle_batch, unshuffle_batch
from suite.bn.split import SplitBatchNorm1d, SplitBatchNorm2d
from suite.bn.sync import SyncBatchNorm, SyncBatchNorm1d, SyncBatchNorm2d
from suite.bn.views import ViewAware, concat_views

__all__ = [
    "STRATEGIES",
    "MomentumBatchNorm1d",
    "MomentumBatchNorm2d",
    "ShuffleHandle",
    "SplitBatchNorm1d",
    "SplitBatchNorm2d",
    "SyncBatchNorm",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "ViewAware",
    "concat_views",
    "convert_bn",
    "shuffle_batch",
    "unshuffle_batch",
]
