"""Interleaved A/B timing: A and B alternate step by step; the median of per-pair ratios.

Robust to load that drifts during a run (shared machines), unlike two separate medians.

    python tests/benchmarks/interleaved.py bn          # BN layers vs nn.BatchNorm2d, (64,64,32,32)
    python tests/benchmarks/interleaved.py engine 32   # training steps, resnet18, batch 64, 32 px
    python tests/benchmarks/interleaved.py engine 64 15  # at 64 px, 15 pairs (default 8)
    python tests/benchmarks/interleaved.py pool        # max pool; resnet18 eval forward vs timm's
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))


def ratio(a, b, pairs: int = 25, warmup: int = 3) -> float:
    """Median over ``pairs`` of time(a) / time(b), a and b called alternately."""
    for _ in range(warmup):
        a()
        b()
    out = []
    for _ in range(pairs):
        t = time.perf_counter()
        a()
        ta = time.perf_counter() - t
        t = time.perf_counter()
        b()
        out.append(ta / (time.perf_counter() - t))
    return statistics.median(out)


def bn() -> None:
    from suite.bn import MomentumBatchNorm2d, SplitBatchNorm2d

    x = torch.randn(64, 64, 32, 32)
    g = torch.randn_like(x)
    plain = nn.BatchNorm2d(64)
    layers = {
        "local_d4": SplitBatchNorm2d(64, 4),
        "momentum_d1": MomentumBatchNorm2d(64, total_steps=10**9, views_per_step=1),
        "momentum_d4": MomentumBatchNorm2d(64, total_steps=10**9, views_per_step=1, devices=4),
    }
    for name, layer in layers.items():

        def fwd(m):
            def run():
                with torch.no_grad():
                    m(x)

            return run

        print(f"forward (no grad)  {name:12s} {ratio(fwd(layer), fwd(plain)):.2f}x plain BN")
    xr = x.clone().requires_grad_()

    def fwd_bwd(m):
        return lambda: m(xr).backward(g)

    split = layers["local_d4"]
    print(f"forward+backward   local_d4     {ratio(fwd_bwd(split), fwd_bwd(plain)):.2f}x plain BN")


def engine(size: int = 32, pairs: int = 8) -> None:
    import test_bench_engine as e

    torch.manual_seed(0)
    suite = e._suite_step(e._cell("byol", size))
    lightly = e._lightly_step(size)
    vs_lightly = ratio(suite, lightly, pairs, 2)
    separate = e._suite_step(e._cell("byol", size), fuse_views=False)
    separate_vs_lightly = ratio(separate, lightly, pairs, 2)
    vs_supervised = ratio(suite, e._supervised_step(size), pairs, 2)
    print(f"{size}px suite BYOL / lightly BYOL      {vs_lightly:.2f}")
    print(f"{size}px  (views forwarded separately)  {separate_vs_lightly:.2f}")
    print(f"{size}px suite BYOL / supervised 2B     {vs_supervised:.2f}")
    mom = e._suite_step(e._cell("m2t", size, "momentum"))
    loc = e._suite_step(e._cell("m2t", size, "local"))
    print(f"{size}px M2T momentum / local teacher  {ratio(mom, loc, pairs, 2):.3f}")


def pool() -> None:
    """suite.models.MaxPool2d vs nn.MaxPool2d: a stem pool's forward + backward (a student's);
    the suite's resnet18 (channels-last stem and pool) vs timm's: a gradient-free forward (a
    teacher's, feature extraction)."""
    from suite.models import MaxPool2d, build_backbone

    for shape in ((128, 64, 16, 16), (128, 64, 32, 32), (128, 64, 48, 48), (64, 64, 112, 112)):
        x = torch.randn(shape).relu_().requires_grad_()
        g = torch.randn(shape[0], shape[1], (shape[2] + 1) // 2, (shape[3] + 1) // 2)

        def train(m, x=x, g=g):
            return lambda: m(x).backward(g)

        r = ratio(train(MaxPool2d(3, 2, 1)), train(nn.MaxPool2d(3, 2, 1)), 10, 2)
        print(f"{tuple(shape)} pool forward+backward, suite / plain  {r:.3f}")

    import timm

    for size, batch in ((64, 128), (96, 128), (224, 32)):
        # ours: channels-last stem and pool; plain: timm's resnet18 as timm builds it
        fast, _ = build_backbone("resnet18", image_size=size, cifar_stem=False)
        plain = timm.create_model("resnet18", pretrained=False, num_classes=0)
        x = torch.randn(batch, 3, size, size)

        def fwd(m, x=x):
            m.eval()

            def run():
                with torch.no_grad():
                    m(x)

            return run

        r = ratio(fwd(fast), fwd(plain), 8, 2)
        print(f"{size}px eval forward, suite / timm resnet18  {r:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1:2] == ["bn"]:
        bn()
    elif sys.argv[1:2] == ["pool"]:
        pool()
    elif sys.argv[1:2] == ["engine"]:
        engine(*(int(a) for a in sys.argv[2:4]))
    else:
        raise SystemExit(__doc__)
