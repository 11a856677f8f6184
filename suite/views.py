"""What each of the two augmented views is drawn from: :class:`ViewSpec`, the papers' recipes and
the rule that resolves a cell's views (torch-free: the configuration layer imports it).

Resolution, each step overriding the previous one key by key (:func:`resolve_views`):

1. the method's recipe (``byol`` for BYOL and Momentum² Teacher, ``mocov2`` for MoCo v2);
2. the small-image rule: at ``image_size <= 64`` px the recipe's blur is off (``blur_p = 0``),
   the CIFAR-size convention of solo-learn and lightly (``blur=True``/``False`` forces it);
3. the dataset's defaults (``DatasetInfo.view_defaults``: ``digits`` has ``flip_p = 0``, since a
   mirrored digit is another digit or none), applied to both views;
4. the experiment file's ``aug`` keys: ``aug.<key>`` for both views, ``aug.view1.<key>`` /
   ``aug.view2.<key>`` for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from suite.recipes import RECIPES, recipe

if TYPE_CHECKING:
    from suite.cell import CellConfig

AUGMENTATIONS = ("byol", "mocov2")
# a method whose name is not a view recipe → its recipe's views (m2t → byol)
AUG_ALIASES = {
    name: r.views for name, r in RECIPES.items() if r.views != name and name not in AUGMENTATIONS
}
SMALL_IMAGE = 64  # blur=None: no blur at or below this size


@dataclass(frozen=True)
class ViewSpec:
    """The distribution one view is drawn from (probabilities are per sample).

    RandomResizedCrop(``scale``, ``ratio``) → flip (``flip_p``) → ColorJitter(``brightness``,
    ``contrast``, ``saturation``, ``hue``) with probability ``jitter_p`` → Grayscale
    (``gray_p``) → Gaussian blur (``blur_p``, σ ∼ U[``blur_sigma``]) → Solarize (``solarize_p``,
    pixels ≥ ``solarize_threshold`` inverted). Defaults: BYOL's shared part (no blur, no solarize).
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    @property
    def jitter(self) -> tuple[float, float, float, float]:
        """ColorJitter strengths ``(brightness, contrast, saturation, hue)``."""
        return (self.brightness, self.contrast, self.saturation, self.hue)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewSpec:
        """Inverse of ``dataclasses.asdict`` (lists, e.g. from JSON, become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


VIEW_KEYS = tuple(f.name for f in fields(ViewSpec))


def aug_kind(method: str) -> str:
    """The view recipe of a method (``suite.recipes.Recipe.views``): ``mocov2`` for MoCo v2,
    ``byol`` for BYOL and m2t."""
    return recipe(method).views


def view_specs(kind: str, *, blur: bool = True) -> tuple[ViewSpec, ViewSpec]:
    """The two views' distributions of a recipe: ``byol``, ``mocov2`` (``m2t`` = ``byol``).

    - ``byol``: RandomResizedCrop(scale 0.08–1), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8,
      Grayscale 0.2; view 1 blur p=1.0; view 2 blur p=0.1 and Solarize(0.5) p=0.2;
    - ``mocov2``: scale 0.2–1, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, Grayscale 0.2, blur 0.5,
      flip 0.5, both views alike.

    ``blur=False`` sets both views' ``blur_p`` to 0.
    """
    name = AUG_ALIASES.get(kind, kind)
    if name == "byol":
        v1 = ViewSpec(blur_p=1.0)
        v2 = ViewSpec(blur_p=0.1, solarize_p=0.2)
    elif name == "mocov2":
        v1 = v2 = ViewSpec(scale=(0.2, 1.0), saturation=0.4, blur_p=0.5)
    else:
        valid = ", ".join(AUGMENTATIONS + tuple(AUG_ALIASES))
        raise ValueError(f"aug: unknown augmentation {kind!r}; valid: {valid}")
    if not blur:
        v1, v2 = replace(v1, blur_p=0.0), replace(v2, blur_p=0.0)
    return v1, v2


def resolve_views(
    kind: str,
    image_size: int,
    dataset_defaults: Mapping[str, Any] | None = None,
    view1: Mapping[str, Any] | None = None,
    view2: Mapping[str, Any] | None = None,
    *,
    blur: bool | None = None,
) -> tuple[ViewSpec, ViewSpec]:
    """Recipe ``kind`` < small-image blur rule < ``dataset_defaults`` (both views) < ``view1`` /
    ``view2`` (the experiment file's values for one view each), key by key.

    ``blur=None`` applies the small-image rule (no blur at ``image_size <= 64``); ``True`` keeps
    the recipe's blur, ``False`` removes it (before the dataset's and the file's values).
    """
    keep_blur = image_size > SMALL_IMAGE if blur is None else blur
    base = view_specs(kind, blur=keep_blur)
    out = []
    for spec, own in zip(base, (view1, view2), strict=True):
        spec = replace(spec, **dict(dataset_defaults or {}))
        out.append(replace(spec, **dict(own or {})))
    return out[0], out[1]


def dataset_view_defaults(name: str) -> Mapping[str, Any]:
    """``DATASETS[name].view_defaults`` (imported here: the data package pulls in torch)."""
    from suite.data import get_dataset

    return dict(get_dataset(name).view_defaults)


def cell_views(cell: CellConfig) -> tuple[ViewSpec, ViewSpec]:
    """The views a cell trains with: its resolved ``aug`` views (every loaded cell has them), else
    (``None``, a cell built in code) its method's recipe with its dataset's defaults."""
    if cell.aug.view1 is not None and cell.aug.view2 is not None:
        return cell.aug.view1, cell.aug.view2
    v1, v2 = resolve_views(
        aug_kind(cell.method.name),
        cell.dataset.image_size,
        dataset_view_defaults(cell.dataset.name),
    )
    return cell.aug.view1 or v1, cell.aug.view2 or v2
