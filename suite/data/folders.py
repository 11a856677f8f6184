"""ImageFolder trees: ``<split>/<class>/<image>``, scanned with ``os.scandir`` and decoded to uint8.

Classes are the sorted sub-folder names of the training split; an evaluation split may hold a
subset of them. Images are files with one of :data:`IMAGE_EXTENSIONS` (any letter case).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from suite.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderSplit:
    """The images of one split: file paths and their class indices."""

    paths: tuple[str, ...]
    labels: Tensor  # long [N]

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the sub-folders of ``split_dir`` (hidden ones skipped)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def loose_images(split_dir: Path) -> list[str]:
    """Image files directly inside ``split_dir`` (a sign of ImageNet's unsorted val layout)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_file() and _is_image(e.name))


def scan_split(split_dir: Path, classes: list[str], dataset: str) -> FolderSplit:
    """All images of ``split_dir/<class>/`` (recursively), labelled by their class's index."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(class_folders(split_dir)) - set(index))
    if unknown:
        raise DataError(
            f"dataset {dataset!r}: {split_dir} has class folders that the training split lacks: "
            f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}"
        )
    paths: list[str] = []
    labels: list[int] = []
    for cls in class_folders(split_dir):
        found = sorted(
            os.path.join(dirpath, name)
            for dirpath, _, names in os.walk(split_dir / cls, followlinks=True)
            for name in names
            if _is_image(name)
        )
        paths.extend(found)
        labels.extend([index[cls]] * len(found))
    return FolderSplit(tuple(paths), torch.tensor(labels, dtype=torch.long))


def decode_rgb(path: str) -> Tensor:
    """Decode an image file with PIL to uint8 ``[3, H, W]`` RGB."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
