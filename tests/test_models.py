"""Backbone factory and heads: shapes, feature dims, CIFAR stem, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from suite.models import MLPHead, apply_cifar_stem, build_backbone


def test_resnet18_cifar_stem_keeps_4x4_map_at_32px_and_512_features():
    """A CIFAR stem (3×3 stride-1 conv, no max-pool) leaves 32/8 = 4×4 at the last stage."""
    model, dim = build_backbone("resnet18", image_size=32)
    assert dim == 512
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 512, 4, 4)
        assert model(x).shape == (2, 512)


def test_resnet18_imagenet_stem_above_64px_reduces_by_32():
    """Without the CIFAR stem (image_size > 64 → automatic off) a 96 px input ends at 3×3."""
    model, dim = build_backbone("resnet18", image_size=96)
    assert not isinstance(model.maxpool, nn.Identity)
    model.eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, dim, 3, 3)


def test_cifar_stem_false_keeps_the_imagenet_stem_at_32px():
    model, _ = build_backbone("resnet18", image_size=32, cifar_stem=False)
    assert model.conv1.kernel_size == (7, 7)


def test_deep_stem_resnet_gets_stride_1_first_conv():
    """resnet*t/d deep stems keep their three 3×3 convs; the first one's stride becomes 1."""
    model, dim = build_backbone("test_resnet", image_size=16)
    assert model.conv1[0].stride == (1, 1)
    model.eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 16, 16)).shape[-1] == 2  # 16 / 8
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, dim)


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet50", 2048), ("resnet10t", 512), ("mobilenetv3_small_050", 1024)]
)
def test_feature_dim_is_the_pooled_output_width(name, dim):
    """The returned width is what the module outputs (mobilenetv3: its 1024-d head conv)."""
    model, got = build_backbone(name, image_size=32)
    assert got == dim
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, dim)


def test_unknown_backbone_names_it_and_points_at_list_models():
    with pytest.raises(ValueError, match=r"'resnet181'.*timm\.list_models\(\)"):
        build_backbone("resnet181", image_size=32)


def test_backbone_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match=r"'test_vit' has no BatchNorm"):
        build_backbone("test_vit", image_size=32)


def test_explicit_cifar_stem_on_non_resnet_is_an_error_and_automatic_skips():
    with pytest.raises(ValueError, match=r"cifar_stem.*test_efficientnet"):
        build_backbone("test_efficientnet", image_size=32, cifar_stem=True)
    model, dim = build_backbone("test_efficientnet", image_size=32)  # automatic: silently kept
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, dim)


def test_apply_cifar_stem_keeps_the_stem_width():
    model, _ = build_backbone("resnet18", image_size=224)
    apply_cifar_stem(model)
    assert (model.conv1.in_channels, model.conv1.out_channels) == (3, 64)


def test_mlp_head_layouts():
    """BYOL head Linear–BN1d–ReLU–Linear; MoCo v2 head Linear–ReLU–Linear; output width."""
    byol = MLPHead(8, 16, 4)
    moco = MLPHead(8, 8, 4, bn=False)
    assert [type(m) for m in byol] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert [type(m) for m in moco] == [nn.Linear, nn.ReLU, nn.Linear]
    assert byol(torch.randn(5, 8)).shape == (5, 4)
    assert moco(torch.randn(5, 8)).shape == (5, 4)


def test_backbone_max_pool_gives_the_plain_pools_values_and_gradients_on_every_path():
    """The stem's pool is suite.models.MaxPool2d (same arguments, no state); on the CPU it pools
    in channels-last, and every path equals nn.MaxPool2d exactly: no-grad forward, forward +
    backward (the channels-last kernel's indices route the gradient), channels-last input."""
    from suite.models import MaxPool2d

    model, _ = build_backbone("resnet18", image_size=64, cifar_stem=False)
    pool = model.maxpool
    assert type(pool) is MaxPool2d and not list(pool.state_dict())
    plain = nn.MaxPool2d(pool.kernel_size, pool.stride, pool.padding)
    x = torch.randn(4, 8, 16, 15).relu()  # ReLU output: ties at zero, as in a ResNet stem
    with torch.no_grad():
        fast = pool(x)
        assert fast.is_contiguous() and torch.equal(fast, plain(x))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(plain(x))
    out = pool(xa)
    assert out.grad_fn is not None and "ChannelsLast" in type(out.grad_fn).__name__
    out.backward(g)
    plain(xb).backward(g)
    assert torch.equal(xa.grad, xb.grad)
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(pool(cl), plain(cl))


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,ceil_mode",
    [(3, 2, 1, 1, False), (2, None, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 2, False)],
)
def test_max_pool_gradient_on_ties_goes_where_the_plain_pools_goes(
    kernel, stride, padding, dilation, ceil_mode
):
    """Windows full of equal values (small integers, ReLU zeros): the gradient lands on the same
    element as nn.MaxPool2d's (the first maximum in window order), for strided, padded, dilated
    and ceil-mode pools; the values are equal too."""
    from suite.models import MaxPool2d

    args = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    ours, plain = MaxPool2d(kernel, **args), nn.MaxPool2d(kernel, **args)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (3, 5, 13, 11), generator=gen).float().relu()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), plain(xb)
    assert torch.equal(ya, yb)
    g = torch.randn(yb.shape, generator=gen)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(xa.grad, xb.grad)


def _without_stem_hook(model):
    plain = copy.deepcopy(model)
    plain._forward_pre_hooks.clear()
    return plain


@pytest.mark.parametrize("name", ["resnet18", "test_resnet"])
def test_resnet_stem_runs_channels_last_on_the_cpu_and_the_stages_after_it_nchw(name):
    """With a max-pool stem, the stem's convolution output is channels-last and the first
    stage's input NCHW-contiguous; outputs, input gradients and every parameter gradient equal
    the NCHW model's (the same model without the hook) up to float rounding, in training and in
    eval mode."""
    model, _ = build_backbone(name, image_size=32, cifar_stem=False)
    plain = _without_stem_hook(model)
    seen = {}
    first_conv = model.conv1 if isinstance(model.conv1, nn.Conv2d) else model.conv1[0]
    first_conv.register_forward_hook(
        lambda m, a, out: seen.update(stem=out.is_contiguous(memory_format=torch.channels_last))
    )
    model.layer1.register_forward_pre_hook(lambda m, a: seen.update(stage=a[0].is_contiguous()))
    x = torch.randn(6, 3, 32, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = model(xa), plain(xb)
    assert seen == {"stem": True, "stage": True}
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    for (n, pa), pb in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-4, msg=n)
    for (n, ba), bb in zip(model.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, rtol=1e-4, atol=1e-5, msg=n)
    model.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-4)


def test_stem_leaves_channels_last_models_and_cifar_stems_alone():
    """A model the caller converted to channels-last keeps it after the stem (the pool is the
    plain layer there); a CIFAR stem has no max pool and no hook."""
    model, _ = build_backbone("resnet18", image_size=32, cifar_stem=False)
    model = model.to(memory_format=torch.channels_last)
    seen = {}
    model.layer1.register_forward_pre_hook(
        lambda m, a: seen.update(cl=a[0].is_contiguous(memory_format=torch.channels_last))
    )
    model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen == {"cl": True}
    cifar, _ = build_backbone("resnet18", image_size=32, cifar_stem=True)
    assert not cifar._forward_pre_hooks
