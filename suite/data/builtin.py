"""Datasets that need no files: scikit-learn's ``digits`` and the class-structured ``synthetic``."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from suite.data.splits import TensorSplits

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    """Bilinear resize (antialiased) of uint8 ``[N, C, h, w]`` to ``size × size``, rounded."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """8×8 uint8 images ``[1797, 1, 8, 8]``, labels, and the sorted train / test indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8))
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.target)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return (
        grey[:, None],
        labels,
        torch.from_numpy(np.sort(train_idx)),
        torch.from_numpy(np.sort(test_idx)),
    )


def digits_splits(image_size: int) -> TensorSplits:
    """scikit-learn ``load_digits`` (1,797 8×8 scans, values 0..16), offline.

    Pixels → uint8 ``round(v·255/16)``, resized (bilinear) to ``image_size``, grey repeated to 3
    channels. Split: stratified 80/20 with ``random_state=0`` (1,437 train / 360 test), indices
    kept in file order; the SSL set is the train split.
    """
    grey, labels, tr, te = _digits_raw()
    images = _resize_uint8(grey, image_size).expand(-1, 3, -1, -1)
    train = (images[tr].contiguous(), labels[tr])
    return TensorSplits(
        ssl=train[0],
        train=train,
        test=(images[te].contiguous(), labels[te]),
        classes=tuple(str(i) for i in range(10)),
    )


def synthetic_images(
    n: int, num_classes: int, image_size: int, *, seed: int, first: int = 0
) -> tuple[Tensor, Tensor]:
    """Class-structured random images: sample ``i`` has class ``y = i mod K`` and is

    ``x = clip(c_y + 0.25·sin(2π f_y ⟨p, u_y⟩ + φ_i) + 0.1·ε, 0, 1)`` at pixel ``p ∈ [0, 1)²``:
    a class colour ``c_y``, stripes of class frequency ``f_y ∈ {2, 3, 4}`` and direction
    ``u_y = (cos θ_y, sin θ_y)``, ``θ_y = π y / K``, a random phase ``φ_i`` and Gaussian noise.
    Class parameters depend only on ``(seed, K)``; the images on ``(seed, K, n, first, size)``.
    """
    g = torch.Generator().manual_seed(seed)
    colours = 0.2 + 0.6 * torch.rand(num_classes, 3, generator=g)
    theta = math.pi * torch.arange(num_classes) / num_classes
    freq = 2.0 + (torch.arange(num_classes) % 3)
    coords = (torch.arange(image_size) + 0.5) / image_size
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    idx = torch.arange(first, first + n)
    labels = idx % num_classes
    chunk = 1024
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        gi = torch.Generator().manual_seed(seed * 1_000_003 + first + start + 1)
        y = labels[sl]
        m = y.numel()
        phase = 2 * math.pi * torch.rand(m, 1, 1, generator=gi)
        proj = torch.cos(theta[y])[:, None, None] * px + torch.sin(theta[y])[:, None, None] * py
        stripes = 0.25 * torch.sin(2 * math.pi * freq[y][:, None, None] * proj + phase)
        noise = 0.1 * torch.randn(m, 3, image_size, image_size, generator=gi)
        x = colours[y][:, :, None, None] + stripes[:, None] + noise
        out[sl] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return out, labels


def synthetic_splits(n: int, num_classes: int, image_size: int, *, seed: int = 0) -> TensorSplits:
    """``n`` train (= SSL) images and ``max(n // 4, K)`` test images of :func:`synthetic_images`."""
    n_test = max(n // 4, num_classes)
    train = synthetic_images(n, num_classes, image_size, seed=seed)
    test = synthetic_images(n_test, num_classes, image_size, seed=seed, first=n)
    return TensorSplits(
        ssl=train[0], train=train, test=test, classes=tuple(str(i) for i in range(num_classes))
    )
