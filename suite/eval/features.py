"""Frozen-encoder features, extracted once per encoder, and the top-k accuracy they are scored by.

The probes work on cached features: the encoder is run once over a dataset with
:func:`extract_features`, and the kNN vote (:mod:`suite.eval.knn`) and every epoch of the cached
linear probe (:mod:`suite.eval.linear`) reuse the resulting ``[N, D]`` tensor; the augmented
probe (:mod:`suite.eval.augmented`) reuses the test split's. The features stay on the device the
encoder ran on unless the caller gathers them elsewhere (:mod:`suite.eval.placement`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from suite.eval.threads import cpu_threads as threads_for
from suite.runtime import autocast_to


def encoder_input(images: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """A batch of images on ``device`` (asynchronously), channels-last when asked for."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


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
    out_device: torch.device | str | Callable[[int], torch.device] | None = None,
    num_rows: int | None = None,
    cpu_threads: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``encoder`` in eval mode over ``batches``; return ``(features, labels)`` in input order.

    ``features`` is float32 ``[N, D]`` (an encoder output of shape ``[B, ...]`` is flattened to
    ``[B, D]``), ``labels`` int64 ``[N]``, both on ``out_device``: by default the device the
    encoder runs on, so that features computed on a GPU never leave it. Each item of ``batches``
    is a pair ``(images, labels)`` (a DataLoader's list works; items beyond the second are
    ignored).

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
        out_device: where the features are gathered; default ``device``. A callable is called
            once, with the feature width ``D`` of the first batch, and returns the device (so a
            caller can decide from the size). Gathering a GPU's features on the CPU copies each
            batch asynchronously into pinned memory and waits once, at the end.
        num_rows: the number of rows ``batches`` yields, when known: the output is allocated once
            (no concatenation, which would hold the features twice) and a different count is an
            error.
        cpu_threads: torch intra-op threads while the encoder runs on the CPU (restored
            afterwards); None keeps the current setting (:mod:`suite.eval.threads`).
    """
    run_device = torch.device(device) if device is not None else _encoder_device(encoder)
    if out_device is None:
        out_device = run_device
    if num_rows is not None and num_rows < 1:
        raise ValueError(f"num_rows: {num_rows}; expected None or >= 1")
    states = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    gather = _Gather(out_device, num_rows, run_device)
    try:
        with threads_for(cpu_threads, run_device):
            for index, batch in enumerate(batches):
                images, targets = _split_batch(batch, index)
                images = encoder_input(images, run_device, channels_last)
                with autocast_to(run_device, autocast_dtype):
                    out = encoder(images)
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"encoder: returned {type(out).__name__}; expected a Tensor of features "
                        "[B, D]"
                    )
                targets = targets.reshape(-1)
                if out.shape[0] != targets.shape[0]:
                    raise ValueError(
                        f"batches: item {index} has {out.shape[0]} feature rows but "
                        f"{targets.shape[0]} labels"
                    )
                gather.add(out.reshape(out.shape[0], -1), targets)
    finally:
        # Pre-order: a parent's train() resets its children, which are then set to their own state.
        for module, training in states:
            module.train(training)
    return gather.result()


class _Gather:
    """Collects feature and label batches on ``place`` (a device, or a function of the feature
    width that returns one): into one preallocated tensor when the row count is known, else a
    list concatenated at the end. Copies from an accelerator to the CPU are asynchronous, into
    pinned memory, with one synchronisation in :meth:`result`."""

    def __init__(self, place, num_rows: int | None, run_device: torch.device) -> None:
        self.place, self.num_rows, self.run_device = place, num_rows, run_device
        self.store = self.run_device
        self.pin = False
        self.features: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.rows = 0
        self.sources: set[torch.device] = set()

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return torch.empty(shape, dtype=dtype, device=self.store, pin_memory=self.pin)

    def add(self, features: Tensor, labels: Tensor) -> None:
        b = features.shape[0]
        if not self.rows:  # the first batch: where the features go
            place = self.place(features.shape[1]) if callable(self.place) else self.place
            self.store = torch.device(place)
            self.pin = self.store.type == "cpu" and features.device.type == "cuda"
        self.sources.add(features.device)
        if self.num_rows is None:
            self.features.append(self._copy(features, torch.float32))
            self.labels.append(self._copy(labels, torch.long))
        else:
            if self.rows + b > self.num_rows:
                raise ValueError(f"batches: yielded more than num_rows={self.num_rows} rows")
            if not self.features:
                self.features = [self._empty((self.num_rows, features.shape[1]), torch.float32)]
                self.labels = [self._empty((self.num_rows,), torch.long)]
            rows = slice(self.rows, self.rows + b)
            self.features[0][rows].copy_(features, non_blocking=self.pin)
            self.labels[0][rows].copy_(labels, non_blocking=self.pin)
        self.rows += b

    def _copy(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        if not self.pin:
            return x.to(self.store, dtype)
        out = self._empty(tuple(x.shape), dtype)
        return out.copy_(x, non_blocking=True)

    def result(self) -> tuple[Tensor, Tensor]:
        if not self.rows:
            raise ValueError("batches: no batches were yielded; cannot extract features")
        if self.num_rows is not None and self.rows != self.num_rows:
            raise ValueError(
                f"batches: yielded {self.rows} rows, expected num_rows={self.num_rows}"
            )
        if self.pin:  # the asynchronous copies into pinned memory must have landed
            for source in self.sources:
                if source.type == "cuda":
                    torch.cuda.synchronize(source)
        if self.num_rows is not None:
            return self.features[0], self.labels[0]
        return torch.cat(self.features), torch.cat(self.labels)


def topk_hits(scores: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> Tensor:
    """:func:`topk_correct` as an int64 tensor ``[len(ks)]`` on ``scores``' device: no host
    synchronisation, so that counts over many chunks are summed on the device and read once."""
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
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    top = scores.topk(max(ks), dim=1).indices
    hits = (top == labels.to(top.device).reshape(-1, 1)).cumsum(dim=1) > 0  # label within top-j
    return hits[:, [k - 1 for k in ks]].sum(dim=0)


def topk_correct(scores: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """For each ``k``: how many rows ``i`` have ``labels[i]`` among the ``k`` largest ``scores[i]``.

    ``scores`` is ``[M, C]`` (logits, probabilities or vote scores), ``labels`` int ``[M]``. Among
    tied scores ``torch.topk`` picks which classes count as top-k.
    """
    ks = tuple(ks)
    return dict(zip(ks, topk_hits(scores, labels, ks).tolist(), strict=True))


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """For each ``k``: the fraction in [0, 1] of rows whose label is among the top-``k`` scores.

    ``acc@k = (1/M) · Σ_i [labels[i] ∈ topk(scores[i], k)]``; 0.0 for an empty set.
    """
    counts = topk_correct(scores, labels, ks)
    total = scores.shape[0]
    return {k: (c / total if total else 0.0) for k, c in counts.items()}
