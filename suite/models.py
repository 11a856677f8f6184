"""Backbones (any timm model with BatchNorm) and the MLP heads of BYOL, M2T and MoCo v2.

>>> backbone, dim = build_backbone("resnet18", image_size=32)   # CIFAR stem chosen automatically
>>> dim
512
>>> projector = MLPHead(dim, 4096, 256)                         # Linear-BN1d-ReLU-Linear (BYOL/M2T)
>>> moco_head = MLPHead(dim, dim, 128, bn=False)                # Linear-ReLU-Linear (MoCo v2)
"""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

CIFAR_STEM_MAX_SIZE = 64  # cifar_stem=None turns the CIFAR stem on for image_size <= this


def has_batchnorm(module: nn.Module) -> bool:
    """True when ``module`` holds at least one BatchNorm layer (any ``_BatchNorm`` subclass)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def build_backbone(
    name: str, *, image_size: int, cifar_stem: bool | None = None
) -> tuple[nn.Module, int]:
    """Create timm model ``name`` without weights or classifier; return ``(module, feature_dim)``.

    ``module(x)`` maps images (N, 3, H, W) to pooled features (N, feature_dim). The model must
    contain BatchNorm (the suite studies BN statistics). ``cifar_stem`` replaces a ResNet's stem for
    small images (see :func:`apply_cifar_stem`); ``None`` means "on when ``image_size <= 64``, where
    the model supports it".
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (close matches: {', '.join(close)})" if close else ""
        raise ValueError(
            f"backbone: unknown timm model {name!r}{hint}; valid names are timm.list_models()"
        )
    model = timm.create_model(name, pretrained=False, num_classes=0)
    if not has_batchnorm(model):
        raise ValueError(
            f"backbone: {name!r} has no BatchNorm layer; this suite compares BatchNorm-statistics "
            "strategies, so choose a model with BatchNorm (e.g. resnet18, resnet50)"
        )
    if cifar_stem is None:
        if image_size <= CIFAR_STEM_MAX_SIZE and supports_cifar_stem(model):
            apply_cifar_stem(model)
    elif cifar_stem:
        if not supports_cifar_stem(model):
            raise ValueError(
                f"cifar_stem: True is not supported for backbone {name!r} "
                f"({type(model).__name__}); the CIFAR stem exists for timm ResNet-family models "
                "only (resnet*, resnext*, seresnet*, wide_resnet*); use cifar_stem: null or false"
            )
        apply_cifar_stem(model)
    for m in model.modules():
        if type(m) is nn.MaxPool2d:
            m.__class__ = MaxPool2d  # same module, same state; a faster CPU path without gradients
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(dim)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max pool of an NCHW tensor computed by the channels-last kernel, with its gradient.

    The channels-last kernel returns the same argmax indices as the NCHW one (a flat index into
    each H×W plane, the first maximum in window order on ties), so the backward is torch's own
    NCHW max-pool backward with those indices: the values and gradients of ``nn.MaxPool2d``.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):  # type: ignore[override]
        y, idx = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last),
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        )
        ctx.save_for_backward(x, idx.contiguous())
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return y.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        x, idx = ctx.saved_tensors
        dx = torch.ops.aten.max_pool2d_with_indices_backward(dy.contiguous(), x, *ctx.args, idx)
        return dx, None, None, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose CPU forward of an NCHW tensor pools in channels-last memory.

    On the CPU, torch's max pool over an NCHW tensor is many times slower than its channels-last
    kernel (a ResNet stem's pool of (128, 64, 32, 32): ~45 ms forward vs ~4 ms, ~16 ms with both
    layout conversions, 2 cores). So an NCHW input is pooled in channels-last and the output
    returned NCHW-contiguous, as the plain layer returns it. Without a gradient only the values
    are computed; with one, the channels-last kernel's argmax indices (the NCHW kernel's own) feed
    torch's NCHW max-pool backward. Values and gradients equal ``nn.MaxPool2d``'s exactly (tested;
    a max is exact). On CUDA, for channels-last input or with ``return_indices`` it is the plain
    layer.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type != "cpu"
            or x.dim() != 4
            or self.return_indices
            or not x.is_contiguous()
            or x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return _ChannelsLastMaxPool.apply(
            x,
            _pair(self.kernel_size),
            _pair(self.stride if self.stride is not None else self.kernel_size),
            _pair(self.padding),
            _pair(self.dilation),
            self.ceil_mode,
        )


def supports_cifar_stem(model: nn.Module) -> bool:
    """True for timm ResNet-family models (a ``conv1`` stem followed by a ``maxpool``)."""
    from timm.models.resnet import ResNet

    return isinstance(model, ResNet)


def apply_cifar_stem(model: nn.Module) -> None:
    """Adapt a timm ResNet's stem to 32-64 px inputs (in place), as solo-learn and lightly do.

    A single-conv stem (7×7, stride 2) becomes a 3×3 stride-1 conv with the same channels; a deep
    stem (three 3×3 convs, ``resnet*d``/``resnet*t``) keeps its convs, the first one's stride set
    to 1. The max-pool is removed. The overall stride drops from 32 to 8 (a 32 px input reaches the
    last stage at 4×4 instead of 1×1).
    """
    stem = model.conv1
    if isinstance(stem, nn.Conv2d):
        model.conv1 = nn.Conv2d(
            stem.in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False
        )
    else:
        first = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


class MLPHead(nn.Sequential):
    """Projector / predictor: ``Linear(in, hidden) – [BatchNorm1d] – ReLU – Linear(hidden, out)``.

    ``bn=True`` is BYOL's/M2T's head (projector 4096→256, predictor 4096→256 on ImageNet; 512→128 in
    the paper's STL10 setting); ``bn=False`` is MoCo v2's ``Linear(d, d) – ReLU – Linear(d, 128)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, bn: bool = True) -> None:
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
        if bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        super().__init__(*layers)
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
