"""The datasets read from files: per dataset, where it lives (its checker), how it is read (its
loader) and its registry entry (:func:`~suite.data.datasets.register_dataset` on the loader).

A checker gets the registry entry and the user's root, returns the resolved location (the folder
or file the loader reads) or raises the entry's :meth:`~suite.data.datasets.DatasetInfo.missing`
error. Checkers only look at names and sizes; loaders read the data (with the readers of
:mod:`suite.data.formats` and :mod:`suite.data.folders`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from suite.data import folders
from suite.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Checker,
    DatasetInfo,
    LoadOptions,
    register_dataset,
)
from suite.data.errors import DataError
from suite.data.formats import (
    MemmapImages,
    cifar_arrays,
    read_cifar_pickle,
    read_idx,
    read_stl_labels,
)
from suite.data.splits import FileSplits, MemmapSplits, TensorSplits

_TV = (
    'on a machine with internet run python -c "import torchvision; '
    "torchvision.datasets.{}('<root>', download=True{})\" and copy <root> here"
)
NO_ROOT = "Set dataset.root in the experiment or pass --data-root."


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


@register_dataset(
    "mnist",
    storage="memory",
    num_classes=10,
    image_size=28,
    mean=(0.1307,) * 3,
    std=(0.3081,) * 3,
    layout="<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
    "(or <root>/mnist.npz from Keras)",
    obtain=_TV.format("MNIST", "") + ", or copy ~/.keras/datasets/mnist.npz",
    check=check_mnist,
    view_defaults={"flip_p": 0.0},  # a mirrored digit is another digit or none
)
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


@register_dataset(
    "cifar10",
    storage="memory",
    num_classes=10,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    layout="<root>/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch,batches.meta}",
    obtain=_TV.format("CIFAR10", "") + ", or extract cifar-10-python.tar.gz "
    "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) into <root>",
    check=check_cifar("cifar-10-batches-py", CIFAR10_FILES),
)
def load_cifar10(location: Path | None, options: LoadOptions) -> TensorSplits:
    assert location is not None
    parts = [cifar_arrays(location / f"data_batch_{i}", "labels") for i in range(1, 6)]
    x_te, y_te = cifar_arrays(location / "test_batch", "labels")
    names = read_cifar_pickle(location / "batches.meta").get("label_names", [])
    x_tr = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y_tr = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    train = (x_tr, y_tr)
    return TensorSplits(x_tr, train, (torch.from_numpy(x_te), torch.from_numpy(y_te)), tuple(names))


@register_dataset(
    "cifar100",
    storage="memory",
    num_classes=100,
    image_size=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    layout="<root>/cifar-100-python/{train,test,meta}",
    obtain=_TV.format("CIFAR100", "") + ", or extract cifar-100-python.tar.gz "
    "(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) into <root>",
    check=check_cifar("cifar-100-python", CIFAR100_FILES),
)
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


@register_dataset(
    "stl10",
    storage="memmap",
    num_classes=10,
    image_size=96,
    mean=(0.4467, 0.4398, 0.4066),
    std=(0.2603, 0.2566, 0.2713),
    layout="<root>/stl10_binary/{" + ",".join(STL10_FILES) + "}",
    obtain=_TV.format("STL10", ", split='train+unlabeled'") + ", or extract "
    "stl10_binary.tar.gz (https://ai.stanford.edu/~acoates/stl10/) into <root>",
    check=check_stl10,
)
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


def read_tree(location: Path | None, eval_dirs: tuple[str, ...]) -> FileSplits:
    """``train/`` and the first of ``eval_dirs`` that exists, one sub-folder per class."""
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


_TREE = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"


@register_dataset(
    "imagenet",
    storage="files",
    num_classes=1000,
    image_size=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layout=_TREE,
    obtain="download ILSVRC2012 from https://image-net.org (login), extract train/ into one "
    "folder per wnid and sort val/ into wnid folders with the standard valprep.sh",
    check=check_tree(("val",)),
    eval_crop_fraction=0.875,
)
def load_imagenet(location: Path | None, options: LoadOptions) -> FileSplits:
    return read_tree(location, ("val",))


@register_dataset(
    "folder",
    storage="files",
    num_classes=None,
    image_size=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layout="<root>/train/<class>/<image> and <root>/val/<class>/<image> (or test/)",
    obtain="arrange your images as one sub-folder per class under train/ and val/",
    check=check_tree(("val", "test")),
    eval_crop_fraction=0.875,
)
def load_folder(location: Path | None, options: LoadOptions) -> FileSplits:
    return read_tree(location, ("val", "test"))


@register_dataset(
    "imagenette",
    storage="files",
    num_classes=10,
    image_size=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layout=_TREE + "; <root> may also be the folder that holds " + " or ".join(IMAGENETTE_FOLDERS),
    obtain="download and extract https://s3.amazonaws.com/fast-ai-imageclas/"
    "imagenette2-320.tgz (or imagenette2.tgz / imagenette2-160.tgz) into <root>",
    check=check_tree(("val",), IMAGENETTE_FOLDERS),
    eval_crop_fraction=0.875,
)
def load_imagenette(location: Path | None, options: LoadOptions) -> FileSplits:
    return read_tree(location, ("val",))
