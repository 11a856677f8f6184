"""The dataset registry: ``DATASETS[name]`` for every name a user may write in YAML.

A dataset is registered where it is read, with :func:`register_dataset` on its loader (as timm
registers models): ``suite.data.builtin`` (``digits``, ``synthetic``) and ``suite.data.ondisk``
(MNIST, CIFAR, STL10, image-folder trees). Adding a dataset is one entry there::

    @register_dataset("mnist", storage="memory", num_classes=10, ..., check=check_mnist)
    def load_mnist(location: Path | None, options: LoadOptions) -> TensorSplits: ...

Each :class:`DatasetInfo` knows its storage kind (``memory``/``memmap``/``files``), class count,
native size, normalisation statistics, expected on-disk layout and how to obtain it. Its
:meth:`DatasetInfo.check` runs before any model is built and raises :class:`DataError` naming the
dataset, the root, the missing files and how to get them; :meth:`DatasetInfo.load` reads the data.
This module knows no dataset: ``suite.data`` imports the modules that register them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import Tensor

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


def needs_no_files(info: DatasetInfo, root: Path | None) -> None:
    """The checker of a dataset that is generated or shipped with a library: nothing to find."""
    return None


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


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    *,
    storage: str,
    num_classes: int | None,
    image_size: int | None,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    layout: str = "",
    obtain: str = "",
    check: Checker = needs_no_files,
    eval_crop_fraction: float = 1.0,
    view_defaults: Mapping[str, Any] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator: register the decorated loader as dataset ``name`` (fields: :class:`DatasetInfo`;
    ``layout`` empty = no files needed). A name may be registered once."""

    def register(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        if storage not in STORAGES:
            raise ValueError(f"dataset {name!r}: storage {storage!r}; choose from {STORAGES}")
        DATASETS[name] = DatasetInfo(
            name=name,
            storage=storage,
            num_classes=num_classes,
            image_size=image_size,
            mean=mean,
            std=std,
            layout=layout,
            obtain=obtain,
            checker=check,
            loader=loader,
            eval_crop_fraction=eval_crop_fraction,
            view_defaults=MappingProxyType(dict(view_defaults or {})),
        )
        return loader

    return register


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
