"""Speed of each BN strategy's layer against nn.BatchNorm2d on (64, 64, 32, 32).

Run:  pytest tests/benchmarks/test_bench_bn.py --benchmark-only --benchmark-group-by=group
Goals (ratios to ``plain`` in the same group, same run): MomentumBN forward ≤ 1.3×, split ≤ 1.3×.
"""

import pytest
import torch
from torch import nn

from suite.bn import MomentumBatchNorm2d, SplitBatchNorm2d, SyncBatchNorm2d

SHAPE = (64, 64, 32, 32)

LAYERS = {
    "plain": lambda: nn.BatchNorm2d(64),
    "local_d1": lambda: SplitBatchNorm2d(64, devices=1),
    "local_d4": lambda: SplitBatchNorm2d(64, devices=4),
    "local_d8": lambda: SplitBatchNorm2d(64, devices=8),
    "sync_single_process": lambda: SyncBatchNorm2d(64),
    "momentum_d1": lambda: MomentumBatchNorm2d(64, total_steps=10**9, views_per_step=1),
    "momentum_d4": lambda: MomentumBatchNorm2d(64, total_steps=10**9, views_per_step=1, devices=4),
}


@pytest.fixture(scope="module")
def x():
    return torch.randn(*SHAPE)


@pytest.mark.parametrize("name", list(LAYERS))
def test_teacher_forward_no_grad(benchmark, name, x):
    benchmark.group = "teacher forward (no grad)"
    layer = LAYERS[name]()

    def run():
        with torch.no_grad():
            return layer(x)

    benchmark(run)


@pytest.mark.parametrize("name", [n for n in LAYERS if not n.startswith("momentum")])
def test_student_forward_backward(benchmark, name, x):
    benchmark.group = "student forward+backward"
    layer = LAYERS[name]()
    xr = x.clone().requires_grad_()
    grad = torch.randn(*SHAPE)

    def run():
        xr.grad = None
        layer(xr).backward(grad)

    benchmark(run)
