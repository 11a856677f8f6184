"""The resolved configuration of one cell of an experiment matrix.

A :class:`CellConfig` is what the training loop, the tracker and the checker consume: every value is
resolved (no matrix axes, no environment variables left), the dataclasses are frozen, and the
:attr:`CellConfig.cell_id` is a hash of everything that changes the result. Where a cell is tracked
(the MLflow URI) and which device runs it are deliberately not part of the cell.

``suite.config`` builds cells from experiment files; tests and the benchmark build them directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from suite.recipes import RECIPES, recipe
from suite.views import ViewSpec

STRATEGIES = ("local", "sync", "momentum", "shuffle")
METHODS = tuple(RECIPES)  # byol, mocov2, m2t
OPTIMIZERS = ("sgd", "lars")
ENCODERS = ("student", "teacher")
VARIANCES = ("official", "standard")
HISTORIES = ("per_device", "shared")  # MomentumBN: one history per device, or one for all
# Which BN statistics the evaluated encoder normalises with (recorded with every number): device
# 0's running statistics / MomentumBN history, i.e. those of the checkpoint DDP rank 0 saves.
EVAL_BN_STATISTICS = "device0"
PRECISIONS = ("auto", "fp32", "bf16")
FLOOR_BN = ("calibrated", "init")  # random-init floor: BN statistics of the data, or the init's 0/1
# Linear probe: on cached features of the unaugmented train split (fast), or the standard protocol
# of the papers' ImageNet numbers, a classifier trained on augmented images (suite.eval.augmented)
LINEAR_PROTOCOLS = ("cached", "augmented")
NOT_HASHED = ("dataset.root", "dataset.num_workers", "log_every", "checkpoint_every")


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset, where, at which resolution."""

    name: str = "digits"
    root: str | None = None
    image_size: int = 32
    num_workers: int = 2


@dataclass(frozen=True)
class AugConfig:
    """The two views' distributions. ``load_experiment`` always resolves both (method recipe <
    small-image blur rule < dataset default < file, :func:`suite.views.resolve_views`), so params
    and the cell id hold what runs; ``None`` (cells built in code): that resolution at run time."""

    view1: ViewSpec | None = None
    view2: ViewSpec | None = None


@dataclass(frozen=True)
class MethodConfig:
    """Method and heads. ``None`` means "the method's standard value" (resolved by the method)."""

    name: str = "byol"
    proj_hidden: int | None = None  # BYOL/M2T 4096, MoCo v2 = backbone width (2048 for R50)
    proj_dim: int | None = None  # BYOL/M2T 256, MoCo v2 128
    pred_hidden: int | None = None  # BYOL/M2T 4096 (MoCo v2 has no predictor)
    base_momentum: float | None = None  # teacher EMA m0: BYOL/M2T 0.99, MoCo v2 0.999
    queue_size: int = 65536  # MoCo v2 only; sized down to the data by the method
    temperature: float = 0.2  # MoCo v2 InfoNCE temperature
    symmetric: bool = False  # MoCo v2 symmetric loss
    momentum_schedule: str | None = None  # teacher momentum: cosine / constant (None: recipe's)


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser and learning-rate schedule (per-iteration linear warm-up, then cosine to 0)."""

    name: str = "sgd"
    lr_per_256: float = 0.05  # lr = lr_per_256 * batch_size / 256
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    warmup_lr: float = 1e-6
    # BYOL: biases and BN parameters get no weight decay and no LARS adaptation
    exclude_bn_and_bias: bool = True


@dataclass(frozen=True)
class KnnConfig:
    """Weighted cosine kNN probe."""

    k: int = 200
    temperature: float = 0.1


@dataclass(frozen=True)
class LinearConfig:
    """Linear probe: its schedule, and how its classifier is trained (``protocol``)."""

    epochs: int = 100
    lr: float = 0.1
    batch_size: int = 256
    protocol: str = "cached"  # cached features, or augmented images (see LINEAR_PROTOCOLS)

    def __post_init__(self) -> None:
        # cells built in code are checked too (files are checked by the schema, with the path)
        if self.protocol not in LINEAR_PROTOCOLS:
            raise ValueError(
                f"eval.linear.protocol: {self.protocol!r} is not a linear-probe protocol; "
                f"choose from {', '.join(LINEAR_PROTOCOLS)}"
            )


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol: recorded with every number it produces."""

    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    encoder: str | None = None  # None: BYOL evaluates the student, M2T the teacher, MoCo the query
    random_init_floor: bool = True  # also probe the untrained encoder
    floor_bn: str = "calibrated"  # its BN statistics: calibrated on the train split, or init's
    floor_inits: int = 1  # inits the floor averages: 1 = the cell's seed; K > 1: K fixed seeds


@dataclass(frozen=True)
class BenchConfig:
    """A *bench cell* (``steps >= 1``): the runner times the training step instead of training
    and evaluating (:mod:`suite.throughput`). ``steps = 0`` (the default) is a training cell.

    Every round times the cell's step and, interleaved in the same processes, a local/local
    reference (``reference``) and a supervised step on the same images (``supervised``)."""

    steps: int = 0  # timed rounds (median reported); 0: not a bench cell
    warmup: int = 3  # untimed rounds first
    reference: bool = True  # also time the same method with local/local BN, interleaved
    supervised: bool = False  # also time a supervised step on the same 2B images, interleaved


@dataclass(frozen=True)
class CellConfig:
    """One trained-and-evaluated configuration: a point of the experiment matrix.

    The field paths are the experiment file's keys and the MLflow params (``dataset.image_size``,
    ``optimizer.lr_per_256``, ``eval.knn.k``); ``experiment`` is the file's ``name``."""

    experiment: str = "adhoc"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    backbone: str = "resnet18"
    cifar_stem: bool | None = None  # None: automatic (ResNets at image_size <= 64)
    method: MethodConfig = field(default_factory=MethodConfig)
    epochs: int = 1
    max_steps: int | None = None  # stop early (smoke runs); schedules still span epochs
    batch_size: int = 64  # global batch per view
    devices: int = 1  # per-device BN statistics as on this many devices
    nproc: int = 1  # processes (torchrun); devices must be a multiple of nproc
    # A cell built in code gives both; an experiment file leaves them to the method's recipe
    # (suite.recipes: BYOL sync/sync, MoCo v2 local/shuffle, M2T local/momentum).
    student_bn: str = "local"
    teacher_bn: str = "local"
    bn_variance: str = "official"  # MomentumBN variance convention
    bn_history: str = "per_device"  # MomentumBN: per_device (DDP, official) or shared (ablation)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None: on CUDA only
    log_every: int = 10
    checkpoint_every: int = 200
    seed: int = 0
    bench: BenchConfig = field(default_factory=BenchConfig)

    # -- derived -------------------------------------------------------------------------------
    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def eval_encoder(self) -> str:
        if self.eval.encoder is not None:
            return self.eval.encoder
        return recipe(self.method.name).eval_encoder

    @property
    def is_bench(self) -> bool:
        """True for a bench cell (timed steps, no training run, no probes)."""
        return self.bench.steps > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view (``dataset.name``, ``optimizer.lr_per_256`` …): the MLflow params,
        named as the experiment file's keys."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out

    def id_fields(self) -> dict[str, Any]:
        """What the cell id hashes: the fields whose value differs from the field's default, as a
        nested mapping (a sub-configuration with no such field is left out; a view that replaces
        its ``None`` default is kept, even when every key of it is a default).

        Left out as well: :data:`NOT_HASHED` (where the data lives, how many loader workers read
        it, how often the loop logs or checkpoints) and, for a training cell, ``bench`` (its keys
        time a bench cell and change nothing a training cell computes)."""
        changed = _changes(self, None)
        for dotted in NOT_HASHED:
            *parents, key = dotted.split(".")
            node = changed
            for part in parents:
                node = node.get(part, {})
            node.pop(key, None)
        if not self.is_bench:
            changed.pop("bench", None)
        return {k: v for k, v in changed.items() if v != {}}  # emptied by NOT_HASHED

    @property
    def cell_id(self) -> str:
        """12 hex digits of SHA-256 over the canonical JSON of :meth:`id_fields`.

        Only values that differ from their defaults are hashed, so adding a field with a default
        (the behaviour before the field existed) keeps every existing id, and a finished cell is
        not trained again (``experiments/README.md``, "Cell id")."""
        blob = json.dumps(self.id_fields(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        return _from_dict(cls, d)

    def replace(self, **changes: Any) -> CellConfig:
        return dataclasses.replace(self, **changes)


_SAME: Any = object()  # _changes: "equal to the default"


def _changes(value: Any, default: Any) -> Any:
    """The part of ``value`` that differs from ``default``, or ``_SAME``. A dataclass is compared
    field by field with ``default`` when it is of the same type, else with its own class's
    defaults (``type(value)()``); a dataclass that replaces a ``None`` default is never ``_SAME``
    (``{}`` when all its fields are defaults)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        base = default if type(default) is type(value) else type(value)()
        out = {}
        for f in dataclasses.fields(value):
            sub = _changes(getattr(value, f.name), getattr(base, f.name))
            if sub is not _SAME:
                out[f.name] = sub
        return out if out or default is None else _SAME
    return _SAME if value == default else value


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """``cls(**d)`` with nested mappings built into the dataclass their field holds (also
    ``X | None``) and lists into tuples (JSON has no tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        hint = hints.get(key)
        inner = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
        if isinstance(value, dict) and dataclasses.is_dataclass(inner[0]):
            value = _from_dict(inner[0], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)
