"""Two-view augmentation for BYOL / Momentum² Teacher and MoCo v2, batched on the device.

Pipelines (torchvision notation; ``S`` = image size, blur kernel ``k ≈ 0.1·S``, odd):

- ``byol`` (BYOL, Momentum² Teacher): RandomResizedCrop(S, scale 0.08–1), flip p=0.5,
  ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, Grayscale p=0.2; view 1 blur σ∈[0.1, 2] p=1.0;
  view 2 blur p=0.1 and Solarize(0.5) p=0.2.
- ``mocov2``: RandomResizedCrop(S, scale 0.2–1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
  Grayscale p=0.2, blur σ∈[0.1, 2] p=0.5, flip p=0.5; both views from the same distribution.

Implementation choices (each is checked against torchvision per sample in tests/test_augment.py):

- every random parameter is drawn per sample, on the CPU, from the ``torch.Generator`` passed in,
  so the same seed gives the same views on every device; images never leave their device;
- crop + resize is bilinear with antialiasing (``interpolate(antialias=True)``'s rule) written as
  two per-sample interpolation matrices, which equals torchvision's ``resized_crop`` per sample;
  the official code's PIL bicubic crop is not reproduced;
- ColorJitter applies its four operations in a random order drawn per sample (as torchvision does
  per call); hue is rotated in HSV space exactly as ``torchvision ... adjust_hue``;
- Gaussian blur: per-sample σ, separable grouped convolution, reflect padding;
- ``blur=None`` turns blur off for ``S ≤ 64`` (the CIFAR convention of solo-learn and lightly) and
  on above; pass ``blur=True``/``False`` to choose, or ``specs=`` for any two views
  (:func:`suite.views.resolve_views` builds a cell's from its recipe, dataset and file).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from suite.data import augment_ops as ops
from suite.views import (  # noqa: F401 (re-exported: the recipes live in the torch-free module)
    AUG_ALIASES,
    AUGMENTATIONS,
    SMALL_IMAGE,
    ViewSpec,
    view_specs,
)


@dataclass(frozen=True)
class PhotoParams:
    """Per-sample photometric parameters of one view (CPU tensors of length B)."""

    jitter: Tensor  # bool: ColorJitter applied
    factors: Tensor  # [B, 4] brightness, contrast, saturation factors and hue shift
    order: Tensor  # [B, 4] permutation of the four jitter operations
    gray: Tensor  # bool
    blur: Tensor  # bool
    sigma: Tensor  # blur σ
    solarize: Tensor  # bool

    def select(self, rows: slice) -> PhotoParams:
        """The parameters of rows ``rows`` only."""
        return PhotoParams(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


Part = tuple[int, int]  # (rank, world): this process holds one contiguous part of a batch
WHOLE: Part = (0, 1)


def _rows(local: int, part: Part) -> tuple[slice, int]:
    """The rows of part ``(rank, world)`` of a batch whose parts hold ``local`` rows each."""
    rank, world = part
    if not 0 <= rank < world:
        raise ValueError(f"part: rank {rank} is not in [0, {world})")
    return slice(rank * local, (rank + 1) * local), local * world


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _bernoulli(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) < p


def sample_photo_params(spec: ViewSpec, n: int, generator: torch.Generator | None) -> PhotoParams:
    """Draw ColorJitter / Grayscale / blur / solarize parameters for ``n`` samples.

    Factors as torchvision's ColorJitter: ``U[max(0, 1−s), 1+s]`` for brightness, contrast and
    saturation strength ``s``, ``U[−h, h]`` for hue; σ ∼ ``U[blur_sigma]``.
    """
    b, c, s, h = spec.jitter
    factors = torch.stack(
        (
            _uniform(n, max(0.0, 1 - b), 1 + b, generator),
            _uniform(n, max(0.0, 1 - c), 1 + c, generator),
            _uniform(n, max(0.0, 1 - s), 1 + s, generator),
            _uniform(n, -h, h, generator),
        ),
        dim=1,
    )
    return PhotoParams(
        jitter=_bernoulli(n, spec.jitter_p, generator),
        factors=factors,
        order=torch.argsort(torch.rand(n, 4, generator=generator), dim=1),
        gray=_bernoulli(n, spec.gray_p, generator),
        blur=_bernoulli(n, spec.blur_p, generator),
        sigma=_uniform(n, *spec.blur_sigma, generator),
        solarize=_bernoulli(n, spec.solarize_p, generator),
    )


def apply_photometric(x: Tensor, spec: ViewSpec, p: PhotoParams, blur_kernel: int) -> Tensor:
    """ColorJitter → Grayscale → blur → solarize on a float ``[0, 1]`` batch (changed in place)."""
    if any(v != 0 for v in spec.jitter):
        x = ops.color_jitter(x, p.factors, p.order, p.jitter)
    gray_idx = torch.nonzero(p.gray).flatten()
    if gray_idx.numel():
        dev_idx = ops.to_device(gray_idx, x.device)
        x[dev_idx] = ops.grayscale(x[dev_idx]).expand(-1, 3, -1, -1)
    blur_idx = torch.nonzero(p.blur).flatten()
    if blur_idx.numel():
        dev_idx = ops.to_device(blur_idx, x.device)
        x[dev_idx] = ops.gaussian_blur(x[dev_idx], p.sigma[blur_idx], blur_kernel)
    if bool(p.solarize.any()):
        x = ops.solarize(x, p.solarize, spec.solarize_threshold)
    return x


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"generator: must be a CPU torch.Generator (got one on {generator.device}); "
            "parameters are drawn on the CPU so that a seed gives the same views on every device"
        )


def _as_rgb(images: Tensor) -> Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class TwoViewAugment:
    """Two augmented views of a batch, drawn per sample, computed as batched tensor ops.

    >>> aug = TwoViewAugment("byol", 32, mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> v1, v2 = aug(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.Generator().manual_seed(0))
    >>> v1.shape, v1.dtype
    (torch.Size([8, 3, 32, 32]), torch.float32)

    Stages: :meth:`crop_only` (batched crop + resize + flip), :meth:`crop_one` (the same for one
    decoded image, in DataLoader workers, returning uint8) and :meth:`photometric` (the rest,
    batched, with normalisation). ``aug(x, g) == aug.photometric(*aug.crop_only(x, g), g)``.
    """

    def __init__(
        self,
        kind: str,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        blur: bool | None = None,
        specs: tuple[ViewSpec, ViewSpec] | None = None,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size: must be positive, got {image_size}")
        self.kind = AUG_ALIASES.get(kind, kind)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        if specs is None:
            self.blur = image_size > SMALL_IMAGE if blur is None else blur
            self.specs = view_specs(kind, blur=self.blur)
        else:
            self.specs = specs
            self.blur = any(s.blur_p > 0 for s in specs)
        self.blur_kernel = ops.blur_kernel_size(image_size)

    def __repr__(self) -> str:
        return f"TwoViewAugment({self.kind!r}, image_size={self.image_size}, blur={self.blur})"

    def crop_only(
        self, images: Tensor, generator: torch.Generator | None = None, part: Part = WHOLE
    ) -> tuple[Tensor, Tensor]:
        """RandomResizedCrop + flip of each view: float ``[0, 1]`` batches ``[B, 3, S, S]``.

        ``part=(rank, world)``: ``images`` are rows [rank·b, (rank+1)·b) of a batch of world·b;
        parameters are drawn for the whole batch and this part's rows applied, so the parts of
        all ranks together equal the whole batch augmented in one process.
        """
        _check_generator(generator)
        x = ops.to_float01(_as_rgb(images))
        b, _, h, w = x.shape
        rows, total = _rows(b, part)
        views = []
        for spec in self.specs:
            boxes = ops.sample_crop_boxes(total, h, w, spec.scale, spec.ratio, generator)[rows]
            flip = (torch.rand(total, generator=generator) < spec.flip_p)[rows]
            views.append(ops.resized_crop(x, boxes, self.image_size, flip))
        return views[0], views[1]

    def crop_one(
        self, image: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`crop_only` for one uint8 image ``[C, H, W]`` (any size) → two uint8 ``[3, S, S]``.

        Uses ``torchvision.transforms.v2.functional.resized_crop`` (bilinear, antialias) so that
        workers produce fixed-size uint8 tensors for the batched photometric stage.
        """
        from torchvision.transforms.v2 import functional as tvf

        _check_generator(generator)
        img = _as_rgb(image[None])[0]
        _, h, w = img.shape
        out = []
        for spec in self.specs:
            top, left, ch, cw = ops.sample_crop_boxes(1, h, w, spec.scale, spec.ratio, generator)[0]
            crop = tvf.resized_crop(
                img, int(top), int(left), int(ch), int(cw), [self.image_size] * 2, antialias=True
            )
            if bool(torch.rand(1, generator=generator) < spec.flip_p):
                crop = tvf.horizontal_flip(crop)
            out.append(crop.contiguous())
        return out[0], out[1]

    def photometric(
        self,
        view1: Tensor,
        view2: Tensor,
        generator: torch.Generator | None = None,
        part: Part = WHOLE,
    ) -> tuple[Tensor, Tensor]:
        """Jitter, grayscale, blur, solarize and normalise two cropped batches (uint8 or float);
        ``part`` as in :meth:`crop_only`."""
        _check_generator(generator)
        rows, total = _rows(view1.shape[0], part)
        out = []
        for spec, view in zip(self.specs, (view1, view2), strict=True):
            x = ops.to_float01(_as_rgb(view))
            if x.data_ptr() == view.data_ptr():
                x = x.clone()  # the ops below work in place
            params = sample_photo_params(spec, total, generator).select(rows)
            x = apply_photometric(x, spec, params, self.blur_kernel)
            out.append(ops.normalize(x, self.mean, self.std))
        return out[0], out[1]

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None, part: Part = WHOLE
    ) -> tuple[Tensor, Tensor]:
        """Two views ``(v1, v2)``, float32 normalised ``[B, 3, S, S]`` on ``images``' device;
        ``part`` as in :meth:`crop_only`."""
        return self.photometric(*self.crop_only(images, generator, part), generator, part)


class EvalTransform:
    """No augmentation: resize the shorter side to ``round(S / crop_fraction)``, centre-crop
    ``S × S`` (bilinear, antialias), normalise. ``crop_fraction=0.875`` is ImageNet's
    Resize(256)+CenterCrop(224); ``1.0`` resizes a square image to ``S`` as a whole."""

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_fraction: float = 1.0,
    ) -> None:
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction: must be in (0, 1], got {crop_fraction}")
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_fraction = crop_fraction

    def _box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """The source box that Resize(shorter→R) + CenterCrop(S) reads, in source pixels."""
        resized = round(self.image_size / self.crop_fraction)
        side = min(h, w) * self.image_size / resized
        ch = cw = max(1, round(side))
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def resize(self, images: Tensor) -> Tensor:
        """Batched resize + centre crop of a ``[B, C, H, W]`` batch → float ``[0, 1]``."""
        x = ops.to_float01(_as_rgb(images))
        b, _, h, w = x.shape
        if h == w == self.image_size:
            return x
        box = torch.tensor(self._box(h, w), dtype=torch.long).expand(b, 4)
        return ops.resized_crop(x, box, self.image_size)

    def one(self, image: Tensor) -> Tensor:
        """Per-image (DataLoader worker) version on uint8 ``[C, H, W]`` → uint8 ``[3, S, S]``."""
        from torchvision.transforms.v2 import functional as tvf

        img = _as_rgb(image[None])[0]
        resized = round(self.image_size / self.crop_fraction)
        img = tvf.resize(img, [resized], antialias=True)
        return tvf.center_crop(img, [self.image_size, self.image_size]).contiguous()

    def __call__(self, images: Tensor) -> Tensor:
        """Float32 normalised ``[B, 3, S, S]``."""
        return ops.normalize(self.resize(images), self.mean, self.std)


class CropFlip:
    """The view a linear classifier is trained on in the standard (augmented) linear evaluation:
    RandomResizedCrop(S, ``scale``, ``ratio``) then a horizontal flip with probability
    ``flip_p``, normalised — torchvision's ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()``
    with their defaults, as in MoCo's and the official Momentum² Teacher linear evaluation.

    Parameters are drawn per sample on the CPU from the generator passed in (the same seed gives
    the same views on every device); :meth:`__call__` crops a batch on its device, :meth:`one`
    crops one decoded image in a DataLoader worker (uint8, for :meth:`normalize` on the device).
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size: must be positive, got {image_size}")
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale, self.ratio, self.flip_p = tuple(scale), tuple(ratio), flip_p

    def __repr__(self) -> str:
        return (
            f"CropFlip({self.image_size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip_p={self.flip_p})"
        )

    def _draw(self, n: int, h: int, w: int, generator: torch.Generator | None):
        boxes = ops.sample_crop_boxes(n, h, w, self.scale, self.ratio, generator)
        return boxes, torch.rand(n, generator=generator) < self.flip_p

    def crop(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Cropped, resized and flipped float ``[0, 1]`` batch ``[B, 3, S, S]`` (any input size)."""
        _check_generator(generator)
        x = ops.to_float01(_as_rgb(images))
        b, _, h, w = x.shape
        boxes, flip = self._draw(b, h, w, generator)
        return ops.resized_crop(x, boxes, self.image_size, flip)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Float32 normalised ``[B, 3, S, S]`` on ``images``' device."""
        return ops.normalize(self.crop(images, generator), self.mean, self.std)

    def one(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One uint8 image ``[C, H, W]`` → its uint8 view ``[3, S, S]`` (torchvision kernels)."""
        from torchvision.transforms.v2 import functional as tvf

        _check_generator(generator)
        img = _as_rgb(image[None])[0]
        (top, left, ch, cw), flip = (t[0] for t in self._draw(1, *img.shape[1:], generator))
        crop = tvf.resized_crop(
            img, int(top), int(left), int(ch), int(cw), [self.image_size] * 2, antialias=True
        )
        return (tvf.horizontal_flip(crop) if bool(flip) else crop).contiguous()

    def normalize(self, views: Tensor) -> Tensor:
        """Float32 normalised batch from :meth:`one`'s uint8 views (stacked)."""
        return ops.normalize(ops.to_float01(views), self.mean, self.std)
