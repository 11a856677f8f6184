"""What runs inside DataLoader worker processes: gathering memory-mapped batches, decoding and
cropping image files. All randomness comes from seeds carried in the sampled items, so the
output does not depend on the number of workers or on which worker gets which item."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from suite.data.augment import CropFlip, EvalTransform, TwoViewAugment
from suite.data.folders import FolderSplit, decode_rgb
from suite.data.formats import MemmapImages


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (BLAKE2b of their decimal form): independent streams per
    ``(seed, epoch, step)`` or ``(seed, epoch, sample)``."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ItemSampler(Sampler[Any]):
    """Yields ``items``, which the main process replaces before each pass over the loader
    (the sampler lives in the main process, even with persistent workers)."""

    def __init__(self) -> None:
        self.items: Sequence[Any] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class MemmapBatches(Dataset[Tensor]):
    """Item = an array of indices → their images as one uint8 batch (``batch_size=None``)."""

    def __init__(self, images: MemmapImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: np.ndarray) -> Tensor:
        return self.images.take(index)


class FileCrops(Dataset[tuple[Tensor, Tensor]]):
    """Item = ``(sample, epoch)`` → the two uint8 crops of that image, with the crop parameters
    drawn from ``Generator(mix_seed(seed, epoch, sample))``."""

    def __init__(self, split: FolderSplit, augment: TwoViewAugment, seed: int) -> None:
        self.paths = split.paths
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, epoch = item
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        return self.augment.crop_one(decode_rgb(self.paths[index]), generator)


class FileEval(Dataset[tuple[Tensor, Tensor]]):
    """Item = sample index → (resized and centre-cropped uint8 image, label)."""

    def __init__(self, split: FolderSplit, transform: EvalTransform) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.transform.one(decode_rgb(self.split.paths[index]))
        return image, self.split.labels[index]


class FileLinearCrops(Dataset[tuple[Tensor, Tensor]]):
    """Item = ``(sample indices, epoch)`` → their linear-evaluation views as one uint8 batch and
    their labels (``batch_size=None``); sample ``i``'s crop is drawn from
    ``Generator(mix_seed(seed, stream, epoch, -1, i))``, whichever batch or worker it is in."""

    def __init__(self, split: FolderSplit, view: CropFlip, seed: int, stream: int) -> None:
        self.split, self.view, self.seed, self.stream = split, view, seed, stream

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[np.ndarray, int]) -> tuple[Tensor, Tensor]:
        indices, epoch = item
        views = [
            self.view.one(
                decode_rgb(self.split.paths[i]),
                torch.Generator().manual_seed(mix_seed(self.seed, self.stream, epoch, -1, int(i))),
            )
            for i in indices
        ]
        return torch.stack(views), self.split.labels[torch.as_tensor(indices)]
