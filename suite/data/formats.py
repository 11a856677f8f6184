"""Readers for the binary formats of MNIST (IDX), CIFAR (python pickles) and STL10 (raw bytes).

Our own small readers: no download logic, no checksum of whole files (so tests can write tiny
files in the real layout), and clear :class:`DataError` messages for truncated or foreign files.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from suite.data.errors import DataError

IDX_UINT8 = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``): bytes ``0 0 0x08 ndim``, then ``ndim`` big-endian
    uint32 sizes, then the uint8 values in C order."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UINT8:
        raise DataError(f"{path}: not a uint8 IDX file (header {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if values.size != math.prod(dims):
        raise DataError(
            f"{path}: IDX header says {dims} = {math.prod(dims)} values, found {values.size}"
        )
    return values.reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Inverse of :func:`read_idx` (used by tests to write the real layout)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UINT8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR files contain (dicts, lists, strings, numpy arrays)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR python-version batch (a pickled dict; Python 2 strings read as latin-1)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` uint8 (rows of 3072 = R plane, G plane, B plane) and labels."""
    batch = read_cifar_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: missing key 'data' or {label_key!r} (found {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected [N, 3072]")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


class MemmapImages:
    """Fixed-size uint8 images stored back to back in raw files, memory-mapped, never loaded whole.

    STL10's ``*_X.bin`` hold each image as 3 planes of 96×96 bytes in column-major order (the
    file's byte ``c·96² + x·96 + y`` is pixel (row y, column x) of channel c): with
    ``column_major=True`` :meth:`take` returns row-major ``[b, 3, H, W]``. Pickles without the
    maps, so DataLoader workers reopen the files themselves.
    """

    def __init__(self, files: tuple[Path, ...], shape: tuple[int, int, int], column_major: bool):
        self.files = tuple(Path(f) for f in files)
        self.shape = shape
        self.column_major = column_major
        item = math.prod(shape)
        self.counts: list[int] = []
        for f in self.files:
            size = f.stat().st_size
            if size % item:
                raise DataError(f"{f}: {size} bytes is not a whole number of {shape} images")
            self.counts.append(size // item)
        self.offsets = np.cumsum([0, *self.counts])
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def _open(self) -> list[np.memmap]:
        if self._maps is None:
            self._maps = [
                np.memmap(f, dtype=np.uint8, mode="r", shape=(n, *self.shape))
                for f, n in zip(self.files, self.counts, strict=True)
            ]
        return self._maps

    def take(self, index: np.ndarray | Tensor) -> Tensor:
        """Images at the given global indices (order kept) as a uint8 tensor ``[b, C, H, W]``."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        out = np.empty((index.size, *self.shape), dtype=np.uint8)
        part = np.searchsorted(self.offsets, index, side="right") - 1
        for p, mm in enumerate(self._open()):
            sel = np.nonzero(part == p)[0]
            if sel.size:
                out[sel] = mm[index[sel] - self.offsets[p]]
        images = torch.from_numpy(out)
        return images.transpose(2, 3).contiguous() if self.column_major else images


def read_stl_labels(path: Path) -> np.ndarray:
    """STL10 ``*_y.bin``: one byte per image, classes 1..10 → 0..9."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"{path}: labels must be 1..10, found {labels.min() + 1}..{labels.max() + 1}"
        )
    return labels
