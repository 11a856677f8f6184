"""What a dataset's loader returns: the SSL set and the labelled train / test splits.

Three storage kinds, one per loading path in :mod:`suite.data.loaders`:

- :class:`TensorSplits` (``memory``): uint8 tensors, moved to the device once;
- :class:`MemmapSplits` (``memmap``): fixed-size images in raw files, gathered per batch;
- :class:`FileSplits` (``files``): encoded image files, decoded and cropped in DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from suite.data.folders import FolderSplit
from suite.data.formats import MemmapImages


@dataclass(frozen=True)
class TensorSplits:
    """uint8 images ``[N, 3, H, W]`` and long labels ``[N]``; ``ssl`` may be ``train[0]`` itself."""

    ssl: Tensor
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class MemmapSplits:
    """Memory-mapped images (SSL set possibly unlabelled) with in-memory labels."""

    ssl: MemmapImages
    train: tuple[MemmapImages, Tensor]
    test: tuple[MemmapImages, Tensor]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class FileSplits:
    """Image files; the SSL set is the training split (its labels unused)."""

    train: FolderSplit
    test: FolderSplit
    classes: tuple[str, ...]

    @property
    def ssl(self) -> FolderSplit:
        return self.train


Splits = TensorSplits | MemmapSplits | FileSplits
