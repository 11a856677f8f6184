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
            m.__class__ = MaxPool2d  # same module, same state; a faster CPU path
    if supports_cifar_stem(model) and isinstance(getattr(model, "maxpool", None), MaxPool2d):
        model.register_forward_pre_hook(_stem_in_channels_last)
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(dim)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


CHANNELS_LAST = torch.channels_last


def _is_nchw(x: Tensor) -> bool:
    """A contiguous NCHW tensor whose layout differs from channels-last (C > 1, H·W > 1)."""
    return x.is_contiguous() and not x.is_contiguous(memory_format=CHANNELS_LAST)


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max pool by the channels-last CPU kernel, with its gradient; the output is NCHW.

    The input is NCHW (pooled through a channels-last copy) or channels-last (a stem that ran in
    channels-last). The channels-last kernel returns the same argmax indices as the NCHW one (a
    flat index into each H×W plane, the first maximum in window order on ties), so the backward
    is torch's max-pool backward with those indices, in the input's own layout: the values and
    gradients of ``nn.MaxPool2d``.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):  # type: ignore[override]
        nchw = _is_nchw(x)
        y, idx = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=CHANNELS_LAST), kernel, stride, padding, dilation, ceil_mode
        )
        ctx.save_for_backward(x, idx.contiguous() if nchw else idx)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        ctx.layout = torch.contiguous_format if nchw else CHANNELS_LAST
        return y.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        x, idx = ctx.saved_tensors
        dy = dy.contiguous(memory_format=ctx.layout)
        dx = torch.ops.aten.max_pool2d_with_indices_backward(dy, x, *ctx.args, idx)
        return dx, None, None, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools in channels-last memory on the CPU and returns NCHW.

    On the CPU, torch's max pool over an NCHW tensor is many times slower than its channels-last
    kernel (a ResNet stem's pool of (128, 64, 32, 32): ~45 ms forward vs ~4 ms, ~16 ms with both
    layout conversions, 2 cores). So an NCHW input is pooled in channels-last and the output
    returned NCHW-contiguous, as the plain layer returns it; with a gradient, the channels-last
    kernel's argmax indices (the NCHW kernel's own) feed torch's max-pool backward. A ResNet stem
    built by :func:`build_backbone` runs in channels-last on the CPU (see
    :func:`_stem_in_channels_last`) and sets ``restore_nchw`` for the call: its channels-last
    output is pooled as it is and the pool's output returned NCHW, so the stages after the stem
    run as they always do. Values and gradients equal ``nn.MaxPool2d``'s exactly (tested; a max
    is exact). On CUDA, for other channels-last input or with ``return_indices`` it is the plain
    layer.
    """

    restore_nchw = False  # set by the stem's hook for one call: channels-last in, NCHW out

    def forward(self, x: Tensor) -> Tensor:
        restore, self.restore_nchw = self.restore_nchw, False
        if x.device.type != "cpu" or x.dim() != 4 or self.return_indices:
            return super().forward(x)
        if not (_is_nchw(x) or (restore and _is_channels_last(x))):
            return super().forward(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x.contiguous(memory_format=CHANNELS_LAST)).contiguous()
        return _ChannelsLastMaxPool.apply(
            x,
            _pair(self.kernel_size),
            _pair(self.stride),  # nn.MaxPool2d stores kernel_size for stride=None
            _pair(self.padding),
            _pair(self.dilation),
            self.ceil_mode,
        )


def _stem_in_channels_last(model: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of a ResNet with a max-pool stem: on the CPU, the stem runs channels-last.

    The input images (3 channels, cheap to convert) become channels-last, so the stem's
    convolution, BatchNorm and activation run in channels-last and its max pool pools without a
    layout copy of the stem's large output; the pool returns NCHW (``restore_nchw``). On 2 cores
    at 64-96 px (batch 128) the stem's forward + backward takes ~0.77x, its gradient-free forward
    ~0.67x the NCHW stem's. Values equal the NCHW computation up to float rounding (tested). An
    input that is not a contiguous NCHW CPU tensor (CUDA, or a model the caller converted to
    channels-last) is left as it is.
    """
    x = args[0] if args else None
    if not isinstance(x, Tensor) or x.device.type != "cpu" or x.dim() != 4 or not _is_nchw(x):
        return None
    model.maxpool.restore_nchw = True
    return (x.contiguous(memory_format=CHANNELS_LAST), *args[1:])


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
