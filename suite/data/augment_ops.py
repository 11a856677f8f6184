"""Batched image operations with per-sample parameters, as pure tensor ops (no loop over samples).

Every function takes a float batch ``x`` in ``[0, 1]`` of shape ``[B, C, H, W]`` on any device and
per-sample parameters as tensors of length ``B``. Each one equals the corresponding
``torchvision.transforms.v2.functional`` kernel applied to every sample with that sample's
parameter (the tests check it); the definitions are written next to each function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` (per-sample parameters drawn on the CPU) on ``device``, without a host synchronisation.

    A copy from pageable host memory to a CUDA device waits for the device's stream before it
    starts (CUDA's rule for pageable transfers), so in a training step it would stall the host
    once per parameter tensor. Bound for CUDA, ``t`` is first copied to page-locked memory (torch's
    caching host allocator, which keeps the block until the transfer has finished) and transferred
    asynchronously; on the CPU it is returned as is.
    """
    device = torch.device(device)
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def to_float01(x: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` → float32 ``x / 255``; float input is taken to be in ``[0, 1]``."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def crop_weights(start: Tensor, length: Tensor, size: int, out: int) -> Tensor:
    """Matrix ``[B, out, size]`` resizing the crop ``[start, start+length)`` of an axis to ``out``.

    Bilinear with antialiasing (PyTorch's ``interpolate(..., antialias=True)`` rule), restricted to
    the crop: with ``s = length/out`` and ``c_i = start + s·(i + ½)`` the weight of source pixel
    ``j`` for output ``i`` is ``w_ij ∝ max(0, 1 − |j + ½ − c_i| / max(s, 1))`` for ``j`` inside the
    crop, normalised over ``j``. For ``s ≤ 1`` this is plain bilinear interpolation with
    ``align_corners=False`` and border clamping, i.e. exactly "crop, then resize".
    """
    start = start.to(torch.float32)[:, None, None]
    length = length.to(torch.float32)[:, None, None]
    scale = length / out
    i = torch.arange(out, device=start.device, dtype=torch.float32)[None, :, None]
    j = torch.arange(size, device=start.device, dtype=torch.float32)[None, None, :]
    centre = start + scale * (i + 0.5)
    w = (1.0 - (j + 0.5 - centre).abs() / scale.clamp(min=1.0)).clamp(min=0.0)
    w = w * ((j >= start) & (j < start + length))
    return w / w.sum(-1, keepdim=True)


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each sample to its box and resize it to ``size × size`` (optionally mirrored).

    ``boxes`` is ``[B, 4]`` = (top, left, height, width) in pixels. Separable: with row and column
    matrices from :func:`crop_weights`, ``y_b = R_b · x_b · C_bᵀ`` per channel; a horizontal flip
    reverses the rows of ``C_b`` (``y[..., j] = y[..., S−1−j]``), so it costs nothing.
    """
    b, _, h, w = x.shape
    boxes = to_device(boxes, x.device)
    rows = crop_weights(boxes[:, 0], boxes[:, 2], h, size)
    cols = crop_weights(boxes[:, 1], boxes[:, 3], w, size)
    if flip is not None:
        cols = torch.where(to_device(flip, x.device)[:, None, None], cols.flip(1), cols)
    return rows[:, None] @ x @ cols.transpose(1, 2)[:, None]


def grayscale(x: Tensor) -> Tensor:
    """``L = 0.2989·R + 0.587·G + 0.114·B``, shape ``[B, 1, H, W]``."""
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor | None, factor: Tensor) -> Tensor:
    """``clamp(f·x + (1 − f)·other, 0, 1)`` with one factor per sample (``other=None``: 0)."""
    f = to_device(factor, x.device).to(x.dtype).view(-1, 1, 1, 1)
    out = x * f
    if other is not None:
        out.add_(other * (1.0 - f))
    return out.clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(f·x, 0, 1)``."""
    return _blend(x, None, factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(f·x + (1 − f)·mean(L), 0, 1)``, ``mean(L)`` the sample's mean grey level."""
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(f·x + (1 − f)·L, 0, 1)``, ``L`` the grey image."""
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Rotate hue by ``f`` turns in HSV space, ``H' = (H + f) mod 1`` (torchvision's definition).

    With ``V = max(R, G, B)``, ``Δ = V − min(R, G, B)`` and the hue in sixths of a turn
    ``h = (G − B)/Δ``, ``(B − R)/Δ + 2`` or ``(R − G)/Δ + 4`` when the maximum is R, G or B,
    the HSV round trip keeps ``V`` and ``Δ`` and gives channel ``n ∈ {5, 3, 1}`` (R, G, B) as
    ``V − Δ·clamp(min(k, 4 − k), 0, 1)``, ``k = (n + h + 6f) mod 6``. Grey pixels (Δ = 0) stay.
    """
    r, g, b = x.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    inv = torch.where(delta > 0, delta, 1.0).reciprocal_()
    is_r, is_g = v == r, v == g
    h6 = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g)).mul_(inv)
    h6.add_(torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0)))
    h6.add_(6.0 * to_device(factor, x.device).to(x.dtype).view(-1, 1, 1))
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = h6.unsqueeze(-3).add(n).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(delta.unsqueeze(-3)).neg_().add_(v.unsqueeze(-3))


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> Tensor:
    """ColorJitter with per-sample factors ``[B, 4]`` (brightness, contrast, saturation, hue) and
    per-sample order ``[B, 4]`` (a permutation of 0..3, as torchvision draws one per call).

    Only samples with ``apply`` are changed. The loop runs over the 4 positions × 4 operations;
    each operation is applied to the subset of samples that has it at that position, so every
    sample sees exactly its four operations in its own order. Masks live on the CPU, where the
    parameters were drawn, so the subsets cost no device synchronisation.
    """
    order = order.cpu()
    apply = apply.cpu()
    for position in range(4):
        for op_index, op in enumerate(JITTER_OPS):
            idx = torch.nonzero(apply & (order[:, position] == op_index)).flatten()
            if idx.numel():
                dev_idx = to_device(idx, x.device)
                x[dev_idx] = op(x[dev_idx], factors[idx, op_index])
    return x


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """One normalised 1-D Gaussian per sample: ``g_b(t) ∝ exp(−t² / (2σ_b²))``,
    ``t = −(k−1)/2 … (k−1)/2``; shape ``[B, k]``."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    g = torch.exp(-0.5 * (t[None, :] / sigma.float()[:, None]) ** 2)
    return g / g.sum(-1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with per-sample ``σ`` and reflect padding.

    The batch's ``B·C`` planes become the channels of one grouped convolution (``groups = B·C``),
    first with the column kernels ``[B·C, 1, k, 1]`` and then the row kernels ``[B·C, 1, 1, k]``:
    ``y = g_b ⊛_rows (g_b ⊛_cols x)``, equal to torchvision's 2-D kernel ``g_b g_bᵀ``.
    """
    b, c, h, w = x.shape
    pad = kernel_size // 2
    if pad >= min(h, w):
        raise ValueError(f"blur kernel_size={kernel_size} is too large for {h}x{w} images")
    g = gaussian_kernels(to_device(sigma, x.device), kernel_size).repeat_interleave(c, dim=0)
    planes = x.reshape(1, b * c, h, w)
    planes = F.conv2d(
        F.pad(planes, (0, 0, pad, pad), mode="reflect"), g[:, None, :, None], groups=b * c
    )
    planes = F.conv2d(
        F.pad(planes, (pad, pad, 0, 0), mode="reflect"), g[:, None, None, :], groups=b * c
    )
    return planes.reshape(b, c, h, w)


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel ≈ 10% of the image side: ``2·⌊⌊0.1·S⌋/2⌋ + 1`` (23 at 224 px, BYOL's value)."""
    return 2 * (int(0.1 * image_size) // 2) + 1


def solarize(x: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """``x ↦ 1 − x`` where ``x ≥ threshold``, for the samples with ``apply``."""
    mask = to_device(apply, x.device).view(-1, 1, 1, 1) & (x >= threshold)
    return torch.where(mask, 1.0 - x, x)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x − μ_c) / σ_c`` per channel."""
    m = to_device(torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1), x.device)
    s = to_device(torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1), x.device)
    return (x - m) / s


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Tensor:
    """RandomResizedCrop boxes ``[n, 4]`` (top, left, height, width), torchvision's rule, batched.

    Per attempt: area ``a = U(scale)·H·W``, aspect ``r = exp(U(log ratio))``,
    ``w = round(√(a·r))``, ``h = round(√(a/r))``; the first of ``attempts`` tries with
    ``0 < w ≤ W`` and ``0 < h ≤ H`` wins and its offset is uniform over the valid positions.
    A sample with no valid try gets the centre crop of the whole image clamped to ``ratio``.
    """
    u = torch.rand(n, attempts, 2, generator=generator, dtype=torch.float64)
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.to(torch.int8), dim=1)
    found = ok.any(dim=1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # fallback: whole image, clamped to the allowed aspect ratios, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.where(found, torch.floor(pos[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(found, torch.floor(pos[:, 1] * (width - w + 1)), (width - w) // 2)
    return torch.stack((top, left, h, w), dim=1).long()
