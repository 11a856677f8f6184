"""The interface the training loop uses: :func:`build_data` → :class:`DataBundle`.

>>> bundle = build_data("digits", root=None, image_size=16, aug="byol", batch_size=64,
...                     device=torch.device("cpu"), num_workers=0)
>>> v1, v2 = next(iter(bundle.ssl_epoch(0)))
>>> v1.shape, bundle.steps_per_epoch, bundle.num_classes
(torch.Size([64, 3, 16, 16]), 22, 10)

Three paths, one per storage kind, all ending in the same batched device augmentation:

- ``memory``: the uint8 images are moved to the device once; a batch is an ``index_select``;
- ``memmap``: DataLoader workers gather a batch from the memory-mapped files (pinned memory,
  ``non_blocking`` copy, persistent workers); the device does the whole augmentation;
- ``files``: workers decode each image and do crop + flip (uint8, fixed size); the device does the
  photometric part.

Determinism: epoch ``e`` uses the permutation ``randperm(N, Generator(mix(seed, e)))`` (drop_last)
and batch ``k`` draws its augmentation from ``Generator(mix(seed, e, k))`` (file crops from
``mix(seed, e, sample)``), so a run is reproducible for any number of workers and can restart
in the middle of an epoch (``ssl_epoch(e, start=k)``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from suite.data import augment_ops
from suite.data.augment import (
    AUG_ALIASES,
    AUGMENTATIONS,
    CropFlip,
    EvalTransform,
    TwoViewAugment,
    ViewSpec,
)
from suite.data.datasets import DatasetInfo, LoadOptions, get_dataset
from suite.data.errors import DataError
from suite.data.splits import FileSplits, MemmapSplits, Splits, TensorSplits
from suite.data.workers import (
    FileCrops,
    FileEval,
    FileLinearCrops,
    ItemSampler,
    MemmapBatches,
    mix_seed,
)
from suite.views import resolve_views

SPLITS = ("train", "test")
DEFAULT_SYNTHETIC_SIZE = 2048
LINEAR_STREAM = 0x6C696E  # seeds of the linear-evaluation views: their own random stream


def _loader(dataset, sampler, batch_size, device, num_workers, persistent, **kw) -> DataLoader:
    """DataLoader with pinned memory on CUDA, prefetching workers, and a private generator (the
    DataLoader draws its worker base seed from it instead of from torch's global RNG)."""
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
        **kw,
    )


class DataBundle:
    """A dataset ready for training: SSL batches of two views and labelled evaluation batches."""

    in_chans = 3

    def __init__(
        self,
        info: DatasetInfo,
        splits: Splits,
        augment: TwoViewAugment,
        eval_transform: EvalTransform,
        *,
        batch_size: int,
        device: torch.device,
        num_workers: int,
        seed: int,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        self.info, self.name = info, info.name
        rank, world = part
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise ValueError(
                f"part: rank {rank} of {world} processes cannot share batch_size={batch_size} "
                "equally (batch_size must be a multiple of the process count)"
            )
        self.part, self.local_batch = part, batch_size // world
        self.augment, self.eval_transform = augment, eval_transform
        self.image_size = augment.image_size
        self.batch_size, self.device = batch_size, device
        self.num_workers, self.seed = num_workers, seed
        self.classes = splits.classes
        self.num_classes = len(splits.classes) or int(info.num_classes or 0)
        self.num_ssl_samples = len(splits.ssl)
        self.steps_per_epoch = self.num_ssl_samples // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"batch_size={batch_size} is larger than the {self.num_ssl_samples} SSL samples "
                f"of dataset {info.name!r} (batches drop the remainder): use batch_size <= "
                f"{self.num_ssl_samples}"
            )
        self._splits = splits
        self._ssl_sampler = ItemSampler()
        self._ssl_loader: DataLoader | None = None
        if isinstance(splits, TensorSplits):
            moved: dict[int, Tensor] = {}

            def to_device(x: Tensor) -> Tensor:
                return moved.setdefault(id(x), x.to(device))

            self._tensors = {
                "ssl": to_device(splits.ssl),
                "train": (to_device(splits.train[0]), splits.train[1].to(device)),
                "test": (to_device(splits.test[0]), splits.test[1].to(device)),
            }
        else:
            self._ssl_loader = self._new_ssl_loader()

    def _new_ssl_loader(self) -> DataLoader:
        """Workers start at the first epoch and persist across epochs."""
        d, w = self.device, self.num_workers
        if isinstance(self._splits, MemmapSplits):
            return _loader(MemmapBatches(self._splits.ssl), self._ssl_sampler, None, d, w, True)
        crops = FileCrops(self._splits.ssl, self.augment, self.seed)
        return _loader(crops, self._ssl_sampler, self.local_batch, d, w, True, drop_last=True)

    def __repr__(self) -> str:
        return (
            f"DataBundle({self.name!r}, N={self.num_ssl_samples}, classes={self.num_classes}, "
            f"batch_size={self.batch_size}, {self.augment!r}, device={self.device})"
        )

    def num_samples(self, split: str) -> int:
        """Number of labelled samples in ``train`` or ``test``."""
        return len(self._labels(split))

    def _labels(self, split: str) -> Tensor:
        if split not in SPLITS:
            raise ValueError(f"split: unknown {split!r}; valid: {', '.join(SPLITS)}")
        part = getattr(self._splits, split)
        return part.labels if isinstance(self._splits, FileSplits) else part[1]

    def _order(self, epoch: int, start: int) -> Tensor:
        """Sample indices ``[steps − start, local batch]``: this process's part of each batch."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        perm = torch.randperm(self.num_ssl_samples, generator=g)
        steps, b = self.steps_per_epoch, self.batch_size
        rank, n = self.part[0], self.local_batch
        return perm[: steps * b].view(steps, b)[start:, rank * n : (rank + 1) * n]

    def ssl_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """``steps_per_epoch − start`` pairs ``(view1, view2)``: float32 normalised
        ``[batch_size / world, 3, S, S]`` on the device — this process's part of every global
        batch, augmented exactly as those rows of the whole batch in one process; a pure function
        of ``(seed, epoch)``."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"start: must be in [0, {self.steps_per_epoch}], got {start}")
        return self._ssl_batches(epoch, start)

    def _ssl_batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self._order(epoch, start)

        def generator(k: int) -> torch.Generator:
            return torch.Generator().manual_seed(mix_seed(self.seed, epoch, start + k))

        if self._ssl_loader is None:
            images = self._tensors["ssl"]
            for k, idx in enumerate(batches.to(self.device)):
                yield self.augment(images.index_select(0, idx), generator(k), self.part)
            return
        if isinstance(self._splits, MemmapSplits):
            self._ssl_sampler.items = [b.numpy() for b in batches]
        else:
            self._ssl_sampler.items = [(int(i), epoch) for i in batches.flatten()]
        for k, item in enumerate(self._ssl_loader):
            if isinstance(item, Tensor):
                yield self.augment(item.to(self.device, non_blocking=True), generator(k), self.part)
            else:
                c1, c2 = (c.to(self.device, non_blocking=True) for c in item)
                yield self.augment.photometric(c1, c2, generator(k), self.part)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Every sample of ``split`` once, in order: ``(x, y)`` with ``x`` float32 normalised
        ``[b, 3, S, S]`` (no augmentation) and ``y`` long, both on the device."""
        labels = self._labels(split)
        if batch_size < 1:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        return self._eval_batches(split, batch_size, labels)

    def _eval_batches(
        self, split: str, batch_size: int, labels: Tensor
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(labels)
        if isinstance(self._splits, TensorSplits):
            images, labels = self._tensors[split]
            for i in range(0, n, batch_size):
                yield self.eval_transform(images[i : i + batch_size]), labels[i : i + batch_size]
            return
        if isinstance(self._splits, MemmapSplits):
            sampler = ItemSampler()
            sampler.items = [
                torch.arange(i, min(n, i + batch_size)).numpy() for i in range(0, n, batch_size)
            ]
            data = MemmapBatches(getattr(self._splits, split)[0])
            loader = _loader(data, sampler, None, self.device, self.num_workers, False)
            batches = (
                (x, labels[i * batch_size : (i + 1) * batch_size]) for i, x in enumerate(loader)
            )
        else:
            data = FileEval(getattr(self._splits, split), self.eval_transform)
            batches = iter(_loader(data, None, batch_size, self.device, self.num_workers, False))
        for x, y in batches:
            x = x.to(self.device, non_blocking=True)
            yield self.eval_transform(x), y.to(self.device, non_blocking=True)

    @property
    def linear_view(self) -> CropFlip:
        """The linear-evaluation training view of this dataset: RandomResizedCrop(S) with
        torchvision's defaults and a flip with the dataset's ``flip_p`` (0.5; digits and mnist are
        never mirrored, as in their SSL views)."""
        flip_p = float(self.info.view_defaults.get("flip_p", 0.5))
        return CropFlip(self.image_size, self.info.mean, self.info.std, flip_p=flip_p)

    def linear_steps(self, batch_size: int) -> int:
        """Batches per epoch of :meth:`linear_epoch`: ``ceil(N / batch_size)`` of near-equal size,
        none smaller than 2 (the classifier's BatchNorm needs two rows)."""
        n = self.num_samples("train")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        if n < 2:
            raise DataError(f"the train split of {self.name!r} has {n} sample(s); need >= 2")
        return min(-(-n // batch_size), n // 2)

    def linear_epoch(self, epoch: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Epoch ``epoch`` of the augmented linear evaluation: every train sample once, in the
        order ``randperm(N, Generator(mix(seed, stream, epoch)))``, split into
        :meth:`linear_steps` batches ``(x, y)`` — ``x`` float32 normalised ``[b, 3, S, S]``
        views of :attr:`linear_view`, ``y`` long, both on the device. Batch ``k``'s crops come
        from ``Generator(mix(seed, stream, epoch, k))`` (image files: per sample, in workers): a
        pure function of ``(seed, epoch)``."""
        steps = self.linear_steps(batch_size)
        g = torch.Generator().manual_seed(mix_seed(self.seed, LINEAR_STREAM, epoch))
        order = torch.tensor_split(torch.randperm(self.num_samples("train"), generator=g), steps)
        return self._linear_batches(epoch, order)

    def _linear_batches(
        self, epoch: int, order: tuple[Tensor, ...]
    ) -> Iterator[tuple[Tensor, Tensor]]:
        view = self.linear_view

        def generator(k: int) -> torch.Generator:
            return torch.Generator().manual_seed(mix_seed(self.seed, LINEAR_STREAM, epoch, k))

        if isinstance(self._splits, TensorSplits):
            images, labels = self._tensors["train"]
            for k, idx in enumerate(order):
                idx = augment_ops.to_device(idx, self.device)
                yield view(images.index_select(0, idx), generator(k)), labels.index_select(0, idx)
            return
        sampler = ItemSampler()
        if isinstance(self._splits, MemmapSplits):
            sampler.items = [idx.numpy() for idx in order]
            data = MemmapBatches(self._splits.train[0])
            loader = _loader(data, sampler, None, self.device, self.num_workers, False)
            labels = self._splits.train[1]
            for k, (x, idx) in enumerate(zip(loader, order, strict=True)):
                x = view(x.to(self.device, non_blocking=True), generator(k))
                yield x, augment_ops.to_device(labels[idx], self.device)
            return
        sampler.items = [(idx.numpy(), epoch) for idx in order]
        crops = FileLinearCrops(self._splits.train, view, self.seed, LINEAR_STREAM)
        for x, y in _loader(crops, sampler, None, self.device, self.num_workers, False):
            x = x.to(self.device, non_blocking=True)
            yield view.normalize(x), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the persistent workers (they also stop when the bundle is garbage-collected);
        a later :meth:`ssl_epoch` starts new ones."""
        if self._ssl_loader is not None:
            self._ssl_loader = self._new_ssl_loader()  # the old loader's workers exit with it

    def __enter__(self) -> DataBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ssl_sample_count(name: str, root: str | None) -> int | None:
    """The number of SSL (training) images of dataset ``name`` as the cells load it, for a
    dataset held in memory (loaded here at a small size: the count does not depend on it);
    None for data read from disk as it is used (memmap, files), whose count is not cheap."""
    info = get_dataset(name)
    if not info.in_memory:
        return None
    options = LoadOptions(info.image_size or 8, DEFAULT_SYNTHETIC_SIZE)
    return len(info.load(info.check(root), options).ssl)


def build_data(
    name: str,
    *,
    root: str | None,
    image_size: int,
    aug: str,
    batch_size: int,
    device: torch.device | str,
    num_workers: int = 2,
    seed: int = 0,
    synthetic_size: int | None = None,
    synthetic_classes: int = 10,
    blur: bool | None = None,
    specs: tuple[ViewSpec, ViewSpec] | None = None,
    rank: int = 0,
    world: int = 1,
) -> DataBundle:
    """Check the dataset (``DataError`` before anything is loaded), load it and wrap it.

    ``specs``: the two views' distributions as given; ``None``: recipe ``aug`` (``byol`` or
    ``mocov2``, ``m2t`` = ``byol``) with the dataset's ``view_defaults`` on top
    (:func:`suite.views.resolve_views`; ``blur=None``: blur only above 64 px).
    ``rank``/``world``: under DDP each process loads and augments only its part of every global
    batch of ``batch_size`` (equal to the same rows of the whole batch in one process).
    """
    info = get_dataset(name)
    if aug not in AUGMENTATIONS and aug not in AUG_ALIASES:
        valid = ", ".join(AUGMENTATIONS + tuple(AUG_ALIASES))
        raise ValueError(f"aug: unknown augmentation {aug!r}; valid: {valid}")
    for field, value in (("image_size", image_size), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{field}: must be a positive integer, got {value}")
    if num_workers < 0:
        raise ValueError(f"num_workers: must be >= 0, got {num_workers}")
    if specs is None:
        specs = resolve_views(aug, image_size, info.view_defaults, blur=blur)
    location = info.check(root)
    options = LoadOptions(image_size, synthetic_size or DEFAULT_SYNTHETIC_SIZE, synthetic_classes)
    splits = info.load(location, options)
    return DataBundle(
        info,
        splits,
        TwoViewAugment(aug, image_size, info.mean, info.std, specs=specs),
        EvalTransform(image_size, info.mean, info.std, info.eval_crop_fraction),
        batch_size=batch_size,
        device=torch.device(device),
        num_workers=num_workers,
        seed=seed,
        part=(rank, world),
    )
