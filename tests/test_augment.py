"""Batched two-view augmentation: each op equals torchvision's per sample; seeds reproduce views."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as tvf

from suite.data import EvalTransform, TwoViewAugment, ViewSpec, view_specs
from suite.data import augment_ops as ops
from suite.data.augment import sample_photo_params

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
IDENTITY = ViewSpec(
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    flip_p=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    jitter_p=0.0,
    gray_p=0.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=gen(seed))


def denorm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


@pytest.mark.parametrize("kind", ["byol", "mocov2"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_views_are_float32_normalised_batches_of_image_size(kind, dtype):
    """Output: two float32 [B, 3, S, S] views whose de-normalised values lie in [0, 1]."""
    x = images(6, 20)
    x = x if dtype == torch.uint8 else x.float() / 255
    v1, v2 = TwoViewAugment(kind, 16, MEAN, STD, blur=True)(x, gen())
    for v in (v1, v2):
        assert v.shape == (6, 3, 16, 16) and v.dtype == torch.float32
        assert denorm(v).min() >= -1e-5 and denorm(v).max() <= 1 + 1e-5
    assert not torch.allclose(v1, v2)


def test_same_generator_seed_gives_identical_views_and_another_seed_does_not():
    """aug(x, Generator(s)) is a function of s: equal for equal seeds, different otherwise."""
    aug = TwoViewAugment("byol", 16, MEAN, STD, blur=True)
    x = images()
    a, b, c = aug(x, gen(3)), aug(x, gen(3)), aug(x, gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_input_batch_is_not_modified():
    """The in-place photometric ops work on copies, never on the caller's tensor."""
    x = images().float() / 255
    before = x.clone()
    aug = TwoViewAugment("byol", 24, MEAN, STD, blur=True)
    aug.photometric(x, x, gen())
    assert torch.equal(x, before)


def test_crop_boxes_are_drawn_per_sample_inside_the_image_within_scale_and_ratio():
    """RandomResizedCrop rule: every box inside the image, area/HW in scale, w/h in ratio
    (up to rounding), and different samples get different boxes."""
    h, w = 60, 80
    boxes = ops.sample_crop_boxes(256, h, w, (0.08, 1.0), (3 / 4, 4 / 3), gen())
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    area = (bh * bw).double() / (h * w)
    assert area.min() >= 0.08 * 0.8 and area.max() <= 1.0
    aspect = bw.double() / bh
    assert aspect.min() >= 0.75 * 0.8 and aspect.max() <= 4 / 3 * 1.25
    assert len({tuple(b) for b in boxes.tolist()}) > 200


def test_crop_fallback_is_the_centre_crop_clamped_to_the_ratio():
    """With no feasible try (scale > 1) torchvision falls back to a centred crop of the whole
    image clamped to the ratio range: 10x40 with ratio ≤ 4/3 gives h=10, w=13, left=13."""
    boxes = ops.sample_crop_boxes(4, 10, 40, (2.0, 2.0), (3 / 4, 4 / 3), gen())
    assert boxes.tolist() == [[0, 13, 10, 13]] * 4
    boxes = ops.sample_crop_boxes(4, 12, 12, (2.0, 2.0), (3 / 4, 4 / 3), gen())
    assert boxes.tolist() == [[0, 0, 12, 12]] * 4


@pytest.mark.parametrize("size", [12, 16, 40])
def test_full_image_crop_equals_interpolate(size):
    """scale=(1,1), ratio=(1,1): the crop is F.interpolate(x, S, bilinear, antialias) of x."""
    x = images(4, size).float() / 255
    aug = TwoViewAugment("byol", 16, MEAN, STD, specs=(IDENTITY, IDENTITY))
    c1, c2 = aug.crop_only(x, gen())
    ref = F.interpolate(x, size=16, mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(c1, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2, ref, atol=1e-5, rtol=0)


def test_identity_config_equals_normalise_of_resize():
    """Jitter strengths 0 and all probabilities 0: views = normalise(resize(x))."""
    x = images(4, 20)
    v1, v2 = TwoViewAugment("byol", 16, MEAN, STD, specs=(IDENTITY, IDENTITY))(x, gen())
    resized = F.interpolate(x.float() / 255, size=16, mode="bilinear", antialias=True)
    ref = tvf.normalize(resized, list(MEAN), list(STD))
    torch.testing.assert_close(v1, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, ref, atol=1e-5, rtol=0)


def test_flip_only_config_mirrors_exactly_the_flipped_samples():
    """flip_p=1: the view is the horizontal mirror of the identity view."""
    x = images(4, 16)
    flip = dataclasses.replace(IDENTITY, flip_p=1.0)
    v1, v2 = TwoViewAugment("byol", 16, MEAN, STD, specs=(IDENTITY, flip))(x, gen())
    torch.testing.assert_close(v2, v1.flip(-1))


def test_crops_differ_across_samples_of_one_batch():
    """Per-sample randomness: identical images in a batch get different crops."""
    x = images(1, 32).expand(8, -1, -1, -1)
    c1, _ = TwoViewAugment("byol", 16, MEAN, STD).crop_only(x, gen())
    assert all(not torch.equal(c1[0], c1[i]) for i in range(1, 8))


def reference_view(x, box, flip, spec, p, i, kernel):
    """torchvision.transforms.v2.functional, one sample, with the batched call's parameters."""
    top, left, h, w = (int(v) for v in box)
    y = tvf.resized_crop(x, top, left, h, w, [x.shape[-1]] * 2, antialias=True)
    if flip:
        y = tvf.horizontal_flip(y)
    if p.jitter[i]:
        ops_ = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)
        for k in p.order[i].tolist():
            y = ops_[k](y, float(p.factors[i, k]))
    if p.gray[i]:
        y = tvf.rgb_to_grayscale(y, num_output_channels=3)
    if p.blur[i]:
        y = tvf.gaussian_blur(y, [kernel, kernel], [float(p.sigma[i])] * 2)
    if p.solarize[i]:
        y = tvf.solarize(y, spec.solarize_threshold)
    return tvf.normalize(y, list(MEAN), list(STD))


@pytest.mark.parametrize("kind", ["byol", "mocov2"])
def test_batched_views_equal_torchvision_per_sample_with_the_same_parameters(kind):
    """Each sample of each view equals torchvision's crop → flip → jitter (its order) →
    grayscale → blur → solarize → normalise with the parameters drawn for that sample."""
    b, s = 24, 32
    x = images(b, s, seed=1).float() / 255
    aug = TwoViewAugment(kind, s, MEAN, STD, blur=True)
    v = aug(x, gen(5))
    g = gen(5)  # replay the draws: crops of both views, then photometric parameters of both
    crops = [
        (
            ops.sample_crop_boxes(b, s, s, sp.scale, sp.ratio, g),
            torch.rand(b, generator=g) < sp.flip_p,
        )
        for sp in aug.specs
    ]
    photo = [sample_photo_params(sp, b, g) for sp in aug.specs]
    for view, spec, (boxes, flips), p in zip(v, aug.specs, crops, photo, strict=True):
        for i in range(b):
            ref = reference_view(x[i], boxes[i], flips[i], spec, p, i, aug.blur_kernel)
            torch.testing.assert_close(view[i], ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize(
    ("op", "ref", "low", "high"),
    [
        (ops.adjust_brightness, tvf.adjust_brightness, 0.4, 1.6),
        (ops.adjust_contrast, tvf.adjust_contrast, 0.4, 1.6),
        (ops.adjust_saturation, tvf.adjust_saturation, 0.0, 2.0),
        (ops.adjust_hue, tvf.adjust_hue, -0.5, 0.5),
    ],
)
def test_jitter_op_with_per_sample_factors_equals_torchvision(op, ref, low, high):
    """op(x, f)[i] == torchvision's op(x[i], f[i]) for every sample (float images)."""
    x = torch.rand(16, 3, 9, 11, generator=gen(2))
    x[0] = 0.5  # grey image: hue undefined, must stay unchanged
    f = low + (high - low) * torch.rand(16, generator=gen(3))
    out = op(x.clone(), f)
    for i in range(16):
        torch.testing.assert_close(out[i], ref(x[i], float(f[i])), atol=2e-6, rtol=0)


@pytest.mark.parametrize("kernel", [3, 9, 23])
def test_batched_gaussian_blur_equals_torchvision_per_sample_sigma(kernel):
    """Grouped separable conv with per-sample σ == tvf.gaussian_blur(x[i], k, σ_i)."""
    x = torch.rand(6, 3, 32, 30, generator=gen(4))
    sigma = 0.1 + 1.9 * torch.rand(6, generator=gen(5))
    out = ops.gaussian_blur(x, sigma, kernel)
    for i in range(6):
        ref = tvf.gaussian_blur(x[i], [kernel, kernel], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


def test_solarize_inverts_pixels_at_or_above_threshold_of_selected_samples_only():
    """solarize(x)[i] = 1 − x where x ≥ 0.5 for selected i; unselected samples unchanged."""
    x = torch.rand(4, 3, 5, 5, generator=gen(6))
    x[0, 0, 0, 0] = 0.5
    apply = torch.tensor([True, False, True, False])
    out = ops.solarize(x, apply, 0.5)
    for i in range(4):
        ref = torch.where(x[i] >= 0.5, 1 - x[i], x[i]) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, atol=0, rtol=0)
        if apply[i]:
            torch.testing.assert_close(out[i], tvf.solarize(x[i], 0.5), atol=0, rtol=0)


def test_grayscale_view_has_three_equal_channels():
    """gray_p=1: every output pixel has R = G = B before normalisation."""
    spec = dataclasses.replace(IDENTITY, gray_p=1.0, flip_p=0.5, scale=(0.2, 1.0))
    v1, _ = TwoViewAugment("byol", 16, MEAN, STD, specs=(spec, spec))(images(), gen())
    x = denorm(v1)
    torch.testing.assert_close(x[:, 0], x[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, 1], x[:, 2], atol=1e-5, rtol=0)


def test_worker_crop_of_one_image_equals_batched_crop_to_uint8_rounding():
    """crop_one(img, Generator(s)) draws the same boxes and flips as crop_only(img[None], ...)."""
    x = images(1, 40)
    aug = TwoViewAugment("byol", 24, MEAN, STD)
    one = aug.crop_one(x[0], gen(7))
    batched = aug.crop_only(x, gen(7))
    for a, b in zip(one, batched, strict=True):
        assert a.dtype == torch.uint8 and a.shape == (3, 24, 24)
        assert (a.float() - b[0] * 255).abs().max() <= 1.0


def test_pipeline_definitions_match_the_papers():
    """BYOL: asymmetric blur 1.0/0.1, solarize 0/0.2, jitter (0.4,0.4,0.2,0.1), scale 0.08–1;
    MoCo v2: both views blur 0.5, jitter (0.4,0.4,0.4,0.1), scale 0.2–1; m2t = byol."""
    b1, b2 = view_specs("byol")
    assert (b1.blur_p, b2.blur_p, b1.solarize_p, b2.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert b1.jitter == (0.4, 0.4, 0.2, 0.1) and b1.scale == (0.08, 1.0) and b1.jitter_p == 0.8
    m1, m2 = view_specs("mocov2")
    assert m1 == m2 and m1.blur_p == 0.5 and m1.jitter == (0.4, 0.4, 0.4, 0.1)
    assert m1.scale == (0.2, 1.0) and m1.gray_p == 0.2 and m1.solarize_p == 0.0
    assert view_specs("m2t") == (b1, b2)
    assert all(s.blur_p == 0 for s in view_specs("byol", blur=False))


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_image():
    """k = 2⌊⌊0.1 S⌋/2⌋ + 1: 23 at 224 (BYOL), 9 at 96, 3 at 32; blur=None: off at ≤ 64 px."""
    assert [ops.blur_kernel_size(s) for s in (224, 96, 64, 32)] == [23, 9, 7, 3]
    assert TwoViewAugment("byol", 64, MEAN, STD).blur is False
    assert TwoViewAugment("byol", 96, MEAN, STD).blur is True


def test_unknown_augmentation_names_the_valid_ones():
    """A bad kind is a ValueError naming the value and the choices."""
    with pytest.raises(ValueError, match=r"'simclr'.*byol, mocov2"):
        TwoViewAugment("simclr", 32, MEAN, STD)


def test_eval_transform_of_square_images_is_normalised_resize():
    """EvalTransform(S, crop_fraction=1) == normalise(interpolate(x, S, antialias))."""
    x = images(3, 28)
    out = EvalTransform(32, MEAN, STD)(x)
    ref = F.interpolate(x.float() / 255, size=32, mode="bilinear", antialias=True)
    torch.testing.assert_close(out, tvf.normalize(ref, list(MEAN), list(STD)), atol=1e-5, rtol=0)


def test_eval_transform_one_resizes_shorter_side_and_centre_crops():
    """one(): Resize(round(S/0.875)) + CenterCrop(S) on uint8 (ImageNet's 256/224 rule)."""
    img = images(1, 64)[0][:, :, :48]  # 64 high, 48 wide
    out = EvalTransform(14, MEAN, STD, crop_fraction=0.875).one(img)
    ref = tvf.center_crop(tvf.resize(img, [16], antialias=True), [14, 14])
    assert out.dtype == torch.uint8 and torch.equal(out, ref)


# -- the linear-evaluation view ------------------------------------------------------------------
def test_crop_flip_whole_image_crop_is_the_eval_transform_and_flip_p_1_mirrors_it():
    """CropFlip with scale = ratio = (1, 1): normalise(resize(x)), i.e. EvalTransform of a square
    image; with flip_p = 1 the exact mirror of that; the defaults are torchvision's
    RandomResizedCrop + RandomHorizontalFlip (scale 0.08–1, ratio 3/4–4/3, p 0.5)."""
    from suite.data.augment import CropFlip

    x = images(4, 20)
    whole = CropFlip(16, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    mirrored = CropFlip(16, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    reference = EvalTransform(16, MEAN, STD)(x)
    torch.testing.assert_close(whole(x, gen()), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(mirrored(x, gen()), reference.flip(-1), atol=1e-5, rtol=0)
    default = CropFlip(16, MEAN, STD)
    assert (default.scale, default.ratio, default.flip_p) == ((0.08, 1.0), (3 / 4, 4 / 3), 0.5)


def test_crop_flip_views_differ_per_sample_and_repeat_with_the_seed():
    """Identical images get different crops within a batch; the same seed repeats the batch."""
    from suite.data.augment import CropFlip

    x = images(1, 32).expand(8, -1, -1, -1)
    view = CropFlip(16, MEAN, STD)
    a, b = view(x, gen(3)), view(x, gen(3))
    assert torch.equal(a, b) and a.shape == (8, 3, 16, 16) and a.dtype == torch.float32
    assert len({tuple(v.flatten()[:20].tolist()) for v in a}) == 8


def test_crop_flip_of_one_image_equals_batched_crop_to_uint8_rounding():
    """CropFlip.one (worker, torchvision kernels) draws the same box and flip as the batched
    crop with the same generator seed."""
    from suite.data.augment import CropFlip

    x = images(1, 40)
    view = CropFlip(24, MEAN, STD)
    for seed in range(6):
        one = view.one(x[0], gen(seed))
        batched = view.crop(x, gen(seed))
        assert one.dtype == torch.uint8 and one.shape == (3, 24, 24)
        assert (one.float() - batched[0] * 255).abs().max() <= 1.0 + 1e-3  # uint8 rounding
    torch.testing.assert_close(
        view.normalize(one[None]), ops.normalize(one[None].float() / 255, MEAN, STD)
    )


def test_to_device_returns_a_cpu_tensor_itself_for_the_cpu():
    """Parameters drawn on the CPU stay where they are for a CPU batch: the same tensor, no copy;
    bound elsewhere they are copied with the same values."""
    t = torch.arange(5)
    assert ops.to_device(t, torch.device("cpu")) is t
    assert ops.to_device(t, "cpu") is t
    moved = ops.to_device(t, "meta")
    assert moved.device.type == "meta" and moved.shape == t.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmentation_on_cuda_never_synchronises_the_host_and_equals_the_cpu_views():
    """Every photometric op on (jitter, grayscale, blur, solarize): the two views of a CUDA batch
    are made under torch's sync debug mode set to "error" (a synchronising call raises), and equal
    the CPU views of the same batch and seed."""
    spec = dataclasses.replace(
        view_specs("byol", blur=True)[0], jitter_p=1.0, gray_p=0.5, blur_p=0.5, solarize_p=0.5
    )
    aug = TwoViewAugment("byol", 16, MEAN, STD, specs=(spec, spec))
    x = images(16, 24)
    on_cpu = aug(x, gen(5))
    xc = x.cuda()
    aug(xc, gen(5))  # warm-up: the caching host allocator's first page-locked blocks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_cuda = aug(xc, gen(5))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(on_cuda, on_cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)
