"""Input-rank checks shared by every strategy's 1-D and 2-D layer (mixins, listed first)."""

from __future__ import annotations

from torch import Tensor


class OneD:
    """Accepts [N, C] or [N, C, L] input, as ``nn.BatchNorm1d``."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.dim()}D input)")


class TwoD:
    """Accepts [N, C, H, W] input, as ``nn.BatchNorm2d``."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
