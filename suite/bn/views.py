"""Several views in one forward: ``concat_views`` keeps each view's BN statistics apart."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class ViewAware:
    """Mixin for the suite's BN layers: the input batch holds ``views`` equal consecutive blocks.

    Each block (one augmented view) is normalised with its own statistics, exactly as if it had
    been forwarded alone; per-device chunks are then taken inside each block.
    """

    views: int = 1


@contextmanager
def concat_views(module: nn.Module, views: int) -> Iterator[nn.Module]:
    """Inside the block, every suite BN layer in ``module`` treats its batch as ``views`` views.

    Forwarding ``torch.cat([v1, v2])`` under ``concat_views(model, 2)`` computes what
    ``model(v1)`` and ``model(v2)`` compute (outputs, gradients, running and MomentumBN state) in
    one call. A plain ``nn.BatchNorm`` inside ``module`` would mix the views, so it is an error.

    >>> with concat_views(teacher, 2):                        # doctest: +SKIP
    ...     k = teacher(torch.cat([x2, x1]))
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    layers = [m for m in module.modules() if isinstance(m, ViewAware)]
    if views > 1:
        plain = [
            name
            for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, ViewAware)
        ]
        if plain:
            raise ValueError(
                f"concat_views needs suite BN layers; plain BatchNorm at {plain[:3]} would mix "
                "the views' statistics (run convert_bn first)"
            )
    previous = [m.views for m in layers]
    for m in layers:
        m.views = views
    try:
        yield module
    finally:
        for m, v in zip(layers, previous, strict=True):
            m.views = v
