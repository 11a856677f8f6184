"""Teacher–student self-supervised methods, keyed by the name an experiment file uses.

>>> method = build_method(cell, total_steps=1000, num_ssl_samples=50_000)
>>> loss, logs = method.training_step(view1, view2, step)
"""

from __future__ import annotations

from suite.cell import CellConfig
from suite.methods.base import TeacherStudent
from suite.methods.byol import BYOL, M2T
from suite.methods.mocov2 import MoCoV2

METHODS: dict[str, type[TeacherStudent]] = {"byol": BYOL, "mocov2": MoCoV2, "m2t": M2T}

__all__ = ["BYOL", "M2T", "METHODS", "MoCoV2", "TeacherStudent", "build_method"]


def build_method(cell: CellConfig, *, total_steps: int, num_ssl_samples: int) -> TeacherStudent:
    """The method named by ``cell.method.name``, with the cell's backbone, heads and BN strategies.

    ``total_steps`` spans the cell's schedules (teacher momentum, MomentumBN's β);
    ``num_ssl_samples`` sizes MoCo's queue.
    """
    name = cell.method.name
    if name not in METHODS:
        raise ValueError(f"method.name: {name!r}; valid choices: {', '.join(METHODS)}")
    return METHODS[name](cell, total_steps=total_steps, num_ssl_samples=num_ssl_samples)
