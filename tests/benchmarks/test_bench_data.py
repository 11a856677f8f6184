"""Data-path speed: batched BYOL two views vs a per-sample torchvision loop (CPU, 1 thread).

Run: ``pytest tests/benchmarks/test_bench_data.py --benchmark-only -q``. Both sides compute the
same pipeline (RandomResizedCrop 0.08–1, flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, Grayscale
p=0.2, blur 1.0 / 0.1, Solarize 0 / 0.2, normalise) for 256 uint8 images, blur kernel ≈ 0.1·S,
on one thread.
"""

from __future__ import annotations

import pytest
import torch

from suite.data import TwoViewAugment
from suite.data.augment_ops import blur_kernel_size

BATCH = 256
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def one_thread():
    """Both sides on one CPU thread, as in a DataLoader worker (and steadier on a shared host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8, generator=g)


def torchvision_pipeline(size: int, blur_p: float, solarize_p: float):
    from torchvision.transforms import v2

    k = blur_kernel_size(size)
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p),
            v2.RandomSolarize(128, p=solarize_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


@pytest.mark.parametrize("size", [32, 64])
def test_batched_byol_two_views(benchmark, size):
    """suite.data.TwoViewAugment: one call for the whole batch, parameters drawn per sample."""
    benchmark.group = f"BYOL two views of {BATCH} images at {size} px (CPU, 1 thread)"
    aug = TwoViewAugment("byol", size, MEAN, STD, blur=True)
    x = batch(size)
    v1, v2 = benchmark.pedantic(
        aug, args=(x, torch.Generator().manual_seed(0)), rounds=5, warmup_rounds=1
    )
    assert v1.shape == v2.shape == (BATCH, 3, size, size)


@pytest.mark.parametrize("size", [32, 64])
def test_per_sample_torchvision_v2_loop(benchmark, size):
    """Reference: torchvision.transforms.v2 pipelines called once per image and view."""
    benchmark.group = f"BYOL two views of {BATCH} images at {size} px (CPU, 1 thread)"
    view1, view2 = torchvision_pipeline(size, 1.0, 0.0), torchvision_pipeline(size, 0.1, 0.2)
    x = batch(size)

    def loop():
        return torch.stack([view1(im) for im in x]), torch.stack([view2(im) for im in x])

    v1, v2 = benchmark.pedantic(loop, rounds=3, warmup_rounds=1)
    assert v1.shape == v2.shape == (BATCH, 3, size, size)
