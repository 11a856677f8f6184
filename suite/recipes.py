"""What each method *is*, in one place: its :class:`Recipe` (torch-free; the configuration layer,
the methods, ``bnsuite run`` and ``bnsuite bench`` all read :data:`RECIPES`).

A recipe fixes, per method, the paper's defaults; an experiment file overrides any of them, and
a file that gives ``student_bn``/``teacher_bn`` (or ``bn``) keeps what it gives (an ablation):

=========  ===========  ===========  ==========  ==========  =====================================
method     student BN   teacher BN   views       evaluated   heads (proj hidden, out; pred hidden)
=========  ===========  ===========  ==========  ==========  =====================================
byol       sync         sync         byol        student     4096, 256; 4096   m0 0.99 cosine → 1
mocov2     local        shuffle      mocov2      student     backbone width, 128; —  m0 0.999 const
m2t        local        momentum     byol        teacher     4096, 256; 4096   m0 0.99 cosine → 1
=========  ===========  ===========  ==========  ==========  =====================================

BYOL (Grill et al. 2020) trains with SyncBN on both sides; MoCo v2 (Chen et al. 2020) uses
per-device BN with ShuffleBN on the key encoder; Momentum² Teacher (Li et al. 2021) uses a
per-device-BN student, a MomentumBN teacher, and evaluates the teacher (its official code).
The table in ``experiments/README.md`` ("Method recipes") is tested against :data:`RECIPES`.
"""

from __future__ import annotations

from dataclasses import dataclass

MOMENTUM_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Recipe:
    """A method's defaults (``None`` where noted: ``proj_hidden`` = the backbone's width,
    ``pred_hidden`` = no predictor).

    Teacher momentum ``m_k``: ``cosine`` is BYOL's ``1 − (1 − m0)·(cos(πk/K) + 1)/2`` (m0 → 1),
    ``constant`` is ``m0`` at every step (MoCo).
    """

    method: str
    student_bn: str
    teacher_bn: str
    views: str  # the augmentation recipe (suite.views.view_specs)
    eval_encoder: str
    proj_hidden: int | None
    proj_dim: int
    pred_hidden: int | None
    base_momentum: float
    momentum_schedule: str
    paper: str

    @property
    def bn(self) -> tuple[str, str]:
        """``(student_bn, teacher_bn)``."""
        return (self.student_bn, self.teacher_bn)


RECIPES: dict[str, Recipe] = {
    "byol": Recipe(
        method="byol",
        student_bn="sync",
        teacher_bn="sync",
        views="byol",
        eval_encoder="student",
        proj_hidden=4096,
        proj_dim=256,
        pred_hidden=4096,
        base_momentum=0.99,
        momentum_schedule="cosine",
        paper="BYOL, Grill et al. 2020 (arXiv 2006.07733)",
    ),
    "mocov2": Recipe(
        method="mocov2",
        student_bn="local",
        teacher_bn="shuffle",
        views="mocov2",
        eval_encoder="student",
        proj_hidden=None,
        proj_dim=128,
        pred_hidden=None,
        base_momentum=0.999,
        momentum_schedule="constant",
        paper="MoCo v2, Chen et al. 2020 (arXiv 2003.04297)",
    ),
    "m2t": Recipe(
        method="m2t",
        student_bn="local",
        teacher_bn="momentum",
        views="byol",
        eval_encoder="teacher",
        proj_hidden=4096,
        proj_dim=256,
        pred_hidden=4096,
        base_momentum=0.99,
        momentum_schedule="cosine",
        paper="Momentum² Teacher, Li, Liu, Sun 2021 (arXiv 2101.07525)",
    ),
}


def recipe(method: str) -> Recipe:
    """The recipe of ``method`` (ValueError naming the valid choices otherwise)."""
    try:
        return RECIPES[method]
    except KeyError:
        raise ValueError(f"method.name: {method!r}; valid choices: {', '.join(RECIPES)}") from None
