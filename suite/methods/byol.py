"""BYOL and Momentum² Teacher (M2T, a BYOL preset).

The student predicts the teacher's projection of the *other* view:

    q_i = normalize(predictor(projector(backbone(x_i))))        (student, both views)
    k1 = normalize(teacher(x2)),  k2 = normalize(teacher(x1))   (official call order: x2, then x1)
    loss = mean_n(4 − 2(⟨q1, k1⟩ + ⟨q2, k2⟩))                   (= the two 2 − 2·cos terms)

Heads (the official Momentum² Teacher recipe): projector Linear(d, 4096)–BN–ReLU–Linear(4096,
256), predictor Linear(256, 4096)–BN–ReLU–Linear(4096, 256); the paper's STL10 setting uses
512 → 128 (``MethodConfig.proj_hidden/proj_dim/pred_hidden``). Teacher momentum m0 = 0.99,
cosine to 1.

M2T is BYOL with a MomentumBN teacher and a plain per-device-BN student; the official code
evaluates the teacher. Every default (BN pair, views, evaluated encoder, heads, momentum) is the
method's recipe, ``suite.recipes.RECIPES``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from suite.cell import MethodConfig
from suite.methods.base import TeacherStudent, or_default
from suite.models import MLPHead
from suite.recipes import recipe


def byol_loss(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
    """``mean_n(4 − 2(⟨q̂1, k̂1⟩ + ⟨q̂2, k̂2⟩))`` with ``x̂ = x/‖x‖`` (row-wise)."""
    q1, q2 = F.normalize(q1, dim=1), F.normalize(q2, dim=1)
    k1, k2 = F.normalize(k1, dim=1), F.normalize(k2, dim=1)
    return (4.0 - 2.0 * ((q1 * k1).sum(dim=1) + (q2 * k2).sum(dim=1))).mean()


class BYOL(TeacherStudent):
    """Bootstrap Your Own Latent (Grill et al. 2020): SyncBN on both sides in its own recipe."""

    name = "byol"

    def build_heads(self, dim: int, cfg: MethodConfig) -> tuple[nn.Module, nn.Module | None]:
        r = recipe(self.name)
        hidden = or_default(cfg.proj_hidden, r.proj_hidden or dim)
        out = or_default(cfg.proj_dim, r.proj_dim)
        pred_hidden = or_default(cfg.pred_hidden, r.pred_hidden or out)
        return MLPHead(dim, hidden, out), MLPHead(out, pred_hidden, out)

    def compute_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, float]]:
        q1, q2 = self.forward_student([view1, view2])
        k1, k2 = self.forward_teacher(
            [view2, view1]
        )  # k1 = teacher(x2) first, then k2 = teacher(x1)
        return byol_loss(q1, q2, k1, k2), {}


class M2T(BYOL):
    """Momentum² Teacher (Li et al. 2021): BYOL + MomentumBN teacher + per-device-BN student."""

    name = "m2t"
