"""Frozen-encoder features, extracted once per encoder, and the top-k accuracy they are scored by.

Both evaluation protocols (:mod:`suite.eval.knn`, :mod:`suite.eval.linear`) work on cached features:
the encoder is run once over a dataset with :func:`extract_features`, and the kNN vote and every
epoch of the linear probe reuse the resulting ``[N, D]`` tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _encoder_device(encoder: nn.Module) -> torch.device:
    """The device of the encoder's first parameter (or buffer); CPU for a stateless module."""
    for tensor in (*encoder.parameters(), *encoder.buffers()):
        return tensor.device
    return torch.device("cpu")


def _split_batch(batch: Any, index: int) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, Sequence) or len(batch) < 2:
        raise ValueError(
            f"batches: item {index} is {type(batch).__name__}; expected a pair (images, labels)"
        )
    return batch[0], torch.as_tensor(batch[1])


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``encoder`` in eval mode over ``batches``; return ``(features, labels)`` in input order.

    ``features`` is float32 ``[N, D]`` on the CPU (an encoder output of shape ``[B, ...]`` is
    flattened to ``[B, D]``), ``labels`` is int64 ``[N]`` on the CPU. Each item of ``batches`` is a
    pair ``(images, labels)`` (a DataLoader's list works; items beyond the second are ignored).

    The encoder is put in ``eval()`` (BatchNorm uses its running statistics, as in the official
    linear evaluation) and every submodule's own ``training`` flag is restored afterwards, also
    when the encoder raises. ``torch.no_grad`` is used rather than ``inference_mode`` so that the
    returned tensors are ordinary tensors that a linear probe may train on.

    Args:
        device: where the encoder runs; default the device of its first parameter.
        channels_last: convert 4-D image batches to ``torch.channels_last`` (faster convolutions
            on CUDA).
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``); features are returned as float32 either way.
    """
    run_device = torch.device(device) if device is not None else _encoder_device(encoder)
    states = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    features: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for index, batch in enumerate(batches):
            images, targets = _split_batch(batch, index)
            images = images.to(run_device, non_blocking=True)
            if channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            autocast = (
                torch.autocast(device_type=run_device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with autocast:
                out = encoder(images)
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"encoder: returned {type(out).__name__}; expected a Tensor of features [B, D]"
                )
            targets = targets.reshape(-1)
            if out.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"batches: item {index} has {out.shape[0]} feature rows but "
                    f"{targets.shape[0]} labels"
                )
            features.append(out.reshape(out.shape[0], -1).to("cpu", torch.float32))
            labels.append(targets.to("cpu", torch.long))
    finally:
        # Pre-order: a parent's train() resets its children, which are then set to their own state.
        for module, training in states:
            module.train(training)
    if not features:
        raise ValueError("batches: no batches were yielded; cannot extract features")
    return torch.cat(features), torch.cat(labels)


def topk_correct(scores: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """For each ``k``: how many rows ``i`` have ``labels[i]`` among the ``k`` largest ``scores[i]``.

    ``scores`` is ``[M, C]`` (logits, probabilities or vote scores), ``labels`` int ``[M]``. Among
    tied scores ``torch.topk`` picks which classes count as top-k.
    """
    ks = tuple(ks)
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"scores/labels: shapes {tuple(scores.shape)} and {tuple(labels.shape)}; "
            "expected [M, C] and [M]"
        )
    num_classes = scores.shape[1]
    for k in ks:
        if not 1 <= k <= num_classes:
            raise ValueError(f"ks: k={k} is outside 1..{num_classes} (the number of classes)")
    if not ks:
        return {}
    top = scores.topk(max(ks), dim=1).indices
    hits = top == labels.to(top.device).reshape(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """For each ``k``: the fraction in [0, 1] of rows whose label is among the top-``k`` scores.

    ``acc@k = (1/M) · Σ_i [labels[i] ∈ topk(scores[i], k)]``; 0.0 for an empty set.
    """
    counts = topk_correct(scores, labels, ks)
    total = scores.shape[0]
    return {k: (c / total if total else 0.0) for k, c in counts.items()}
