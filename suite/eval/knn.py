"""Weighted cosine k-nearest-neighbour classification (InstDisc, Wu et al. 2018).

For a test feature ``q`` and train features ``x_j`` with labels ``y_j``, all L2-normalised::

    s_j      = <q, x_j>                                  (cosine similarity)
    N_k(q)   = the k train rows with the largest s_j
    w_j      = exp(s_j / T)
    score_c  = Σ_{j ∈ N_k(q), y_j = c} w_j
    ŷ(q)     = argmax_c score_c

The protocol values (k = 200, T = 0.1 as in InstDisc and lightly's benchmarks; k = 20, T = 0.07
in DINO and mmselfsup) change the numbers: :func:`knn_accuracy` records them with the result.

Test rows are processed in chunks so that one similarity block ``[chunk, N_train]`` stays within a
memory budget (:data:`DEFAULT_BLOCK_BYTES`); 50,000 train × 10,000 test × 512 features needs
about 100 MB for the normalised train features plus one 128 MB block. Everything runs on the device
the features are on (CPU or CUDA); accuracies are counted there and read once, at the end. On
the CPU, ``cpu_threads`` sets the intra-op threads (:mod:`suite.eval.threads`). On CUDA the
similarity matmul follows the caller's ``torch.backends.cuda.matmul.allow_tf32``: with TF32 on,
rows near the k-th neighbour may swap.

Features that break :mod:`suite.finite`'s rule (NaN, inf, ``|x| >= 2**64``) are refused with a
ValueError: their normalisation is not a number, and a vote over them would still print one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from suite.eval.features import topk_hits
from suite.eval.threads import cpu_threads as threads_for
from suite.finite import check_features

DEFAULT_BLOCK_BYTES = 128 * 2**20
"""Default memory budget of one similarity block (chunk × N_train elements)."""


def knn_chunk_size(
    num_train: int, *, element_size: int = 4, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> int:
    """Test rows per chunk: ``max(1, block_bytes // (num_train · element_size))``."""
    return max(1, block_bytes // max(1, num_train * element_size))


def _check_inputs(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int,
    temperature: float,
    num_classes: int | None,
    chunk_size: int | None,
) -> int:
    """Validate the kNN inputs; return the number of classes."""
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(
            f"train_features/test_features: shapes {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}; expected [N, D] and [M, D]"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"test_features: feature width {test_features.shape[1]} differs from "
            f"train_features' {train_features.shape[1]}"
        )
    check_features(train_features, "train_features")
    check_features(test_features, "test_features")
    if train_features.shape[0] == 0:
        raise ValueError("train_features: empty (0 rows); kNN needs at least one train row")
    if train_labels.shape != train_features.shape[:1]:
        raise ValueError(
            f"train_labels: shape {tuple(train_labels.shape)}; expected [{train_features.shape[0]}]"
        )
    if train_features.device != test_features.device:
        raise ValueError(
            f"test_features: on {test_features.device} but train_features on "
            f"{train_features.device}; put both on one device"
        )
    if train_labels.dtype.is_floating_point or train_labels.dtype == torch.bool:
        raise ValueError(f"train_labels: dtype {train_labels.dtype}; expected an integer dtype")
    if k < 1:
        raise ValueError(f"k: {k}; expected an integer >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature: {temperature}; expected a number > 0")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: {chunk_size}; expected None (automatic) or >= 1")
    low, high = int(train_labels.min()), int(train_labels.max())
    if num_classes is None:
        num_classes = high + 1
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"train_labels: values span {low}..{high}; expected 0..{num_classes - 1} "
            f"(num_classes={num_classes})"
        )
    return num_classes


def _iter_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk_size: int | None,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first_row, scores)`` per test chunk; ``scores`` is ``[chunk, C]``."""
    dtype = torch.float64 if train_features.dtype == torch.float64 else torch.float32
    train = F.normalize(train_features.to(dtype), dim=1)
    labels = train_labels.to(train.device, torch.long)
    num_train = train.shape[0]
    k = min(k, num_train)
    if chunk_size is None:
        chunk_size = knn_chunk_size(num_train, element_size=train.element_size())
    chunk_size = min(chunk_size, max(1, test_features.shape[0]))
    block = torch.empty(chunk_size, num_train, dtype=dtype, device=train.device)
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].to(dtype), dim=1)
        sim = torch.mm(query, train.T, out=block[: query.shape[0]])
        top_sim, top_idx = sim.topk(k, dim=1)  # sorted: column 0 is each row's largest s
        # exp((s - s_max)/T) = exp(s/T)·exp(-s_max/T): the same ranking of classes per row,
        # and no overflow for small T (exp(1/0.01) overflows float32).
        weights = (top_sim - top_sim[:, :1]).div_(temperature).exp_()
        scores = torch.zeros(query.shape[0], num_classes, dtype=dtype, device=train.device)
        scores.scatter_add_(1, labels[top_idx], weights)
        yield start, scores


def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    cpu_threads: int | None = None,
) -> Tensor:
    """Class scores ``[M, C]`` of the weighted cosine kNN vote (module docstring).

    Row ``i`` holds ``score_c · exp(-s_max(i)/T)`` (the vote scaled by a positive per-row constant,
    for numerical stability), so its argmax and its top-k classes are those of the vote.
    """
    num_classes = _check_inputs(
        train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
    )
    with threads_for(cpu_threads, train_features.device):
        parts = [
            s
            for _, s in _iter_scores(
                train_features,
                train_labels,
                test_features,
                k,
                temperature,
                num_classes,
                chunk_size,
            )
        ]
    if not parts:
        return test_features.new_zeros(0, num_classes, dtype=torch.float32)
    return torch.cat(parts)


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    cpu_threads: int | None = None,
) -> Tensor:
    """Predict a label per test row by the weighted cosine kNN vote (InstDisc).

    ``ŷ(q) = argmax_c Σ_{j ∈ N_k(q), y_j = c} exp(<q̂, x̂_j> / T)`` where ``q̂``, ``x̂_j`` are the
    L2-normalised features and ``N_k(q)`` the ``k`` most similar train rows. Ties between classes
    go to the smallest class index.

    Args:
        train_features: ``[N, D]``; train_labels: integer ``[N]`` in ``0..num_classes-1``.
        test_features: ``[M, D]`` on the same device as ``train_features`` (CPU or CUDA); the
            computation runs there, in float32 (float64 if the train features are float64).
        k: neighbours that vote; a ``k`` larger than the train set is clipped to ``N``.
        temperature: ``T`` > 0 in the weight ``exp(s/T)``.
        num_classes: ``C``; default ``max(train_labels) + 1``.
        chunk_size: test rows per similarity block; default from a 128 MB budget per block
            (:func:`knn_chunk_size`). The result does not depend on it.
        cpu_threads: torch intra-op threads while the vote runs on the CPU (restored
            afterwards); None keeps the current setting (:mod:`suite.eval.threads`).

    Returns:
        int64 ``[M]`` on the features' device.
    """
    num_classes = _check_inputs(
        train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
    )
    preds = torch.empty(test_features.shape[0], dtype=torch.long, device=train_features.device)
    with threads_for(cpu_threads, train_features.device):
        for start, scores in _iter_scores(
            train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
        ):
            preds[start : start + scores.shape[0]] = scores.argmax(dim=1)
    return preds


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    cpu_threads: int | None = None,
) -> dict[str, Any]:
    """Top-1 (and top-5 when ``C >= 5``) accuracy of :func:`knn_classify`, as fractions in [0, 1].

    Returns ``{"top1", ["top5"], "k", "k_effective", "temperature", "num_train", "num_test"}``:
    ``k`` is the requested value, ``k_effective = min(k, N_train)`` the one that voted.
    ``num_classes`` defaults to ``max(train_labels, test_labels) + 1``.
    """
    if test_labels.shape != test_features.shape[:1]:
        raise ValueError(
            f"test_labels: shape {tuple(test_labels.shape)}; expected [{test_features.shape[0]}]"
        )
    if num_classes is None and train_labels.numel():
        num_classes = int(train_labels.max()) + 1
        if test_labels.numel():
            num_classes = max(num_classes, int(test_labels.max()) + 1)
    num_classes = _check_inputs(
        train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
    )
    ks = (1, 5) if num_classes >= 5 else (1,)
    hits = torch.zeros(len(ks), dtype=torch.long, device=train_features.device)
    with threads_for(cpu_threads, train_features.device):
        for start, scores in _iter_scores(
            train_features, train_labels, test_features, k, temperature, num_classes, chunk_size
        ):
            hits += topk_hits(scores, test_labels[start : start + scores.shape[0]], ks)
    total = test_features.shape[0]
    counts = hits.tolist()  # the one host synchronisation of the vote
    result: dict[str, Any] = {
        f"top{kk}": (c / total if total else 0.0) for kk, c in zip(ks, counts, strict=True)
    }
    result.update(
        k=k,
        k_effective=min(k, train_features.shape[0]),
        temperature=temperature,
        num_train=train_features.shape[0],
        num_test=total,
    )
    return result
