"""The divergence rule: which values a trained cell and its features may hold.

A tensor is **diverged** when any element is NaN, ±inf, or has magnitude ``>= 2**64`` (about
1.8e19, the square root of float32's largest value, 3.4e38). The bound is not a tuning knob:
squaring such a value overflows float32 to inf, and squares are what BatchNorm's variance, an
L2 / cosine normalisation, a kNN similarity and a linear probe's feature standardisation compute,
so nothing derived from it downstream is a number. A finite-but-absurd state (a BN
``running_var`` of 2.9e33 after an exploding learning rate) is therefore diverged too, while
healthy training stays many orders of magnitude below the bound (weights and BN statistics of a
trained ResNet are O(1)–O(1e4); a variance of 2**64 is a standard deviation of 4.3e9).

The check is one reduction per tensor and one host synchronisation for all of them
(:func:`diverged_mask`); the loop runs it at logging and checkpoint steps and before evaluation,
never per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

LIMIT = 2.0**64
"""Magnitude at and above which a value counts as diverged (see the module docstring)."""

RULE = "NaN, inf or |x| >= 2**64 = 1.8e19, whose square overflows float32"


def _max_abs(tensor: Tensor) -> Tensor:
    """``max |x|`` over ``tensor`` as a float32 scalar on its device; NaN when any element is NaN
    (``amax`` propagates NaN); 0 for an empty tensor."""
    if tensor.numel() == 0:
        return torch.zeros((), device=tensor.device)
    return tensor.detach().abs().amax().float()


def diverged_mask(tensors: Sequence[Tensor]) -> Tensor:
    """Bool ``[len(tensors)]`` on the tensors' device: True where the tensor is diverged.

    ``not (max|x| < LIMIT)`` is True for NaN, inf and huge values alike; nothing is copied to the
    host (the caller decides when to synchronise).
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.bool)
    peaks = torch.stack([_max_abs(t) for t in tensors])
    return ~(peaks < LIMIT)


def describe(tensor: Tensor) -> str:
    """``"3 NaN, 0 inf of 4096 values, max finite |x| 2.9e+33"``: what makes ``tensor`` diverged."""
    x = tensor.detach().float()
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    finite = x[torch.isfinite(x)]
    peak = f", max finite |x| {float(finite.abs().max()):.3g}" if finite.numel() else ""
    return f"{nan} NaN, {inf} inf of {x.numel()} values{peak}"


def first_diverged(named: Iterable[tuple[str, Tensor]]) -> tuple[str, Tensor] | None:
    """The first ``(name, tensor)`` of ``named`` that is diverged (floating tensors only), else
    None. One host synchronisation when nothing is diverged."""
    items = [(n, t) for n, t in named if t.is_floating_point()]
    if not items:
        return None
    mask = diverged_mask([t for _, t in items])
    if not bool(mask.any()):
        return None
    return items[int(mask.nonzero()[0, 0])]


def check_features(features: Tensor, name: str) -> None:
    """Raise ValueError when ``features`` is diverged (module rule): a probe must not turn such
    features into an accuracy. The message names ``name`` and the counts."""
    if features.numel() and bool(diverged_mask([features])[0]):
        raise ValueError(
            f"{name}: features are not usable ({describe(features)}; rule: {RULE}); "
            "no accuracy is computed from them"
        )
