"""Evaluate a trained cell: cached features of the chosen encoder → weighted kNN and linear probe.

Every accuracy has its floor beside it: the same probes on the random-init encoder of the same
backbone and data (``knn/top1_random_init``, ``linear/top1_random_init``), whose BatchNorm
statistics are calibrated on the training split first (:func:`calibrate_bn`), as a trained
encoder's are: the floor then measures what training added, not what the statistics add. With
``eval.floor_inits`` > 1 the floor is the mean over that many inits (:func:`probe_floor`).
Accuracies are fractions in [0, 1]; the protocol (k, T, the linear probe's protocol, epochs, lr
and batch, encoder, floor) is part of the cell's params.

Where it runs. Feature extraction, kNN and the linear probe run on the device the cell trained
on. The features stay on that device when the probes' working set fits in its free memory
(:func:`suite.eval.placement.plan_features`); otherwise they are gathered on the CPU, the kNN and
cached probe run there, and the cell's log and ``summary.json`` (``eval/placement``) say why. On
a CPU every step uses all the cores the process may run on (:func:`suite.eval.eval_threads`,
recorded as ``eval/cpu_threads``), whatever thread count the process trained with. The seconds
each step took are recorded (``eval/features_s``, ``eval/knn_s``, ``eval/linear_s``).

The linear probe follows ``eval.linear.protocol``: ``cached`` trains on the cached features of
the unaugmented train split (:func:`suite.eval.linear_probe`); ``augmented`` is the standard
protocol of MoCo's and the official Momentum² Teacher evaluation — a classifier trained on
RandomResizedCrop + flip views of the train images through the frozen encoder in eval mode, SGD
with momentum and a cosine learning rate, scored on the centre-resized test images
(:func:`suite.eval.linear_probe_augmented`). The random-init floor uses the same protocol.

Features of the trained encoder that break the divergence rule of :mod:`suite.finite` (NaN, inf,
``|x| >= 2**64``) fail the cell with :class:`suite.train.TrainingDiverged`; the probes themselves
refuse such input too, so no accuracy is ever computed from them.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn

from suite import runtime
from suite.cell import CellConfig

EXTRACT_BATCH = 256  # images per encoder forward when extracting features (at least the probe's)
Pair = tuple[torch.Tensor, torch.Tensor]


def eval_cpu_threads(device: torch.device) -> int | None:
    """Intra-op threads for evaluation work on ``device``: every core on the CPU; None (leave the
    setting) on an accelerator."""
    from suite.eval import eval_threads

    return eval_threads() if torch.device(device).type == "cpu" else None


def extract_splits(
    cell: CellConfig, encoder: nn.Module, data, device: torch.device, channels_last: bool, dtype
) -> tuple[Pair, Pair, Any]:
    """Cached ``(features, labels)`` of the train and test splits (no augmentation), extracted on
    ``device``, and their :class:`~suite.eval.placement.FeaturePlan`: kept on ``device`` when
    they fit (decided at the first batch, when the feature width is known), else on the CPU."""
    from suite.eval import extract_features, plan_features

    rows = {split: data.num_samples(split) for split in ("train", "test")}
    plans = []

    def place(dim: int) -> torch.device:
        plans.append(plan_features(device, rows["train"], rows["test"], dim))
        if not plans[0].on_cell_device:
            print(f"evaluation: features {plans[0].reason}", file=sys.stderr, flush=True)
        return plans[0].device

    def extract(split: str, out_device) -> Pair:
        return extract_features(
            encoder,
            data.eval_batches(split, max(cell.eval.linear.batch_size, EXTRACT_BATCH)),
            device=device,
            channels_last=channels_last,
            autocast_dtype=dtype,
            out_device=out_device,
            num_rows=rows[split],
            cpu_threads=eval_cpu_threads(device),
        )

    train = extract("train", place)
    test = extract("test", plans[0].device)
    return train, test, plans[0]


def check_features(cell: CellConfig, *features: torch.Tensor) -> None:
    """Raise :class:`~suite.train.TrainingDiverged` when any of the evaluated encoder's feature
    tensors breaks :mod:`suite.finite`'s rule; the message names the encoder and the counts."""
    from suite import finite
    from suite.train import TrainingDiverged

    for split, x in zip(("train", "test"), features, strict=False):
        if x.numel() and bool(finite.diverged_mask([x])[0]):
            raise TrainingDiverged(
                f"before evaluation: the {cell.eval_encoder}'s {split} features are diverged "
                f"({finite.describe(x)}; rule: {finite.RULE}); no probe is run on them"
            )


def probe_knn(cell: CellConfig, train: Pair, test: Pair, num_classes: int, suffix: str = ""):
    """Weighted kNN on cached features, where they are."""
    from suite.eval import knn_accuracy

    (train_x, train_y), (test_x, test_y) = train, test
    knn = knn_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        k=cell.eval.knn.k,
        temperature=cell.eval.knn.temperature,
        num_classes=num_classes,
        cpu_threads=eval_cpu_threads(train_x.device),
    )
    out = {f"knn/top1{suffix}": knn["top1"]}
    if "top5" in knn:
        out[f"knn/top5{suffix}"] = knn["top5"]
    return out


def probe_linear(
    cell: CellConfig,
    encoder: nn.Module,
    data,
    train: Pair | None,
    test: Pair,
    device: torch.device,
    channels_last: bool,
    dtype,
    suffix: str = "",
) -> dict[str, Any]:
    """The linear probe of ``eval.linear.protocol``: ``cached`` on the cached ``train`` features
    (where they are), ``augmented`` on augmented train images through ``encoder`` on ``device``,
    both scored on the cached ``test`` features."""
    from suite.eval import linear_probe, linear_probe_augmented

    lin_cfg = cell.eval.linear
    if lin_cfg.protocol == "cached":
        assert train is not None
        lin = linear_probe(
            *train,
            *test,
            num_classes=data.num_classes,
            epochs=lin_cfg.epochs,
            lr=lin_cfg.lr,
            batch_size=lin_cfg.batch_size,
            seed=cell.seed,
            cpu_threads=eval_cpu_threads(train[0].device),
        )
    else:
        lin = linear_probe_augmented(
            encoder,
            lambda epoch: data.linear_epoch(epoch, lin_cfg.batch_size),
            *test,
            num_classes=data.num_classes,
            steps_per_epoch=data.linear_steps(lin_cfg.batch_size),
            epochs=lin_cfg.epochs,
            lr=lin_cfg.lr,
            seed=cell.seed,
            device=device,
            channels_last=channels_last,
            autocast_dtype=dtype,
            cpu_threads=eval_cpu_threads(device),
        )
    out = {f"linear/top1{suffix}": lin["top1"], f"linear/best_top1{suffix}": lin["best_top1"]}
    if "top5" in lin:
        out[f"linear/top5{suffix}"] = lin["top5"]
    return out


def probe_encoder(
    cell: CellConfig,
    encoder: nn.Module,
    data,
    device: torch.device,
    channels_last: bool,
    dtype,
    suffix: str = "",
    check: bool = False,
) -> dict[str, Any]:
    """Features, kNN and linear probe of one encoder, with where and how long each step ran;
    ``check``: refuse diverged features with :class:`~suite.train.TrainingDiverged` first."""
    t0 = time.perf_counter()
    train, test, plan = extract_splits(cell, encoder, data, device, channels_last, dtype)
    if check:
        check_features(cell, train[0], test[0])  # reads the features: they are computed
    t1 = time.perf_counter()
    metrics = probe_knn(cell, train, test, data.num_classes, suffix)
    t2 = time.perf_counter()
    if cell.eval.linear.protocol != "cached":
        train = None  # the augmented probe needs only the test features: free the train ones
    metrics.update(
        probe_linear(cell, encoder, data, train, test, device, channels_last, dtype, suffix)
    )
    t3 = time.perf_counter()
    metrics.update(
        {
            f"eval/features_s{suffix}": t1 - t0,
            f"eval/knn_s{suffix}": t2 - t1,
            f"eval/linear_s{suffix}": t3 - t2,
        }
    )
    if not suffix:
        metrics.update(
            {
                "eval/feature_dim": test[0].shape[1],
                "eval/features_on_device": int(plan.on_cell_device),
                "eval/working_set_mb": plan.bytes / 2**20,
                "eval/placement": plan.reason,
            }
        )
        threads = eval_cpu_threads(plan.device)
        if threads is not None:
            metrics["eval/cpu_threads"] = threads
    return metrics


@torch.no_grad()
def calibrate_bn(encoder: nn.Module, batches, device, channels_last: bool, dtype) -> None:
    """Give an untrained encoder the BN statistics of the data: reset every BatchNorm's running
    mean and variance, average them over one pass of ``batches`` in train mode (cumulative
    average, ``momentum=None``), then return to eval mode. Weights are untouched.

    This is what makes the random-init floor fair: a trained encoder is evaluated with running
    statistics of the data it saw, and with the init's 0/1 statistics a random network is a much
    worse feature extractor than the same network with calibrated statistics (measured on the CI
    cells: 5-6 kNN points of "gain over the floor" came from the statistics alone, with a student
    that never updated)."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    for images, _ in batches:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            encoder(images)
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                encoder(images)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    encoder.eval()


def evaluate_cell(
    cell: CellConfig, method, data, device: torch.device, channels_last: bool
) -> dict[str, Any]:
    """Probe the cell's evaluated encoder on ``device``, and the random-init floor when asked
    for (module docstring)."""
    dtype = runtime.autocast_dtype(device, cell.precision)
    encoder = method.encoder(cell.eval_encoder)
    metrics = probe_encoder(cell, encoder, data, device, channels_last, dtype, check=True)
    if cell.eval.random_init_floor:
        metrics.update(probe_floor(cell, data, device, channels_last, dtype))
    return metrics


FLOOR_SEED_BASE = 1_000_003  # the floor's own inits (eval.floor_inits > 1): seeds BASE + i


def floor_seeds(cell: CellConfig) -> list[int]:
    """The seeds of the floor's random inits. One init (the default): the cell's seed, the same
    init the trained encoder started from. Several: ``FLOOR_SEED_BASE + i`` for ``i < K``, the
    same for every seed of the cell, so the floor is one number per configuration (what a random
    encoder of this backbone scores on this data with these probes) and the spread of a gain over
    seeds is the training's alone."""
    if cell.eval.floor_inits == 1:
        return [cell.seed]
    return [FLOOR_SEED_BASE + i for i in range(cell.eval.floor_inits)]


def probe_floor(
    cell: CellConfig, data, device: torch.device, channels_last: bool, dtype
) -> dict[str, Any]:
    """The random-init floor: the cell's probes on ``eval.floor_inits`` fresh encoders (seeds
    :func:`floor_seeds`; with several, each init's probes use its seed too), BN statistics
    calibrated on the train split unless ``eval.floor_bn`` is ``init``. Each accuracy
    ``<key>_random_init`` is the mean over the inits; with more than one init,
    ``<key>_random_init_std`` (sample std) is recorded too; seconds are summed.

    One init is a noisy floor: random inits of one architecture differ by about as much as a
    short training run's seeds do (on the CI cells the one-init linear floor spread 1.4 points
    over 5 seeds, the trained encoders 0.9), and a gain over it carries both spreads. Several
    fixed inits estimate what a random encoder of this architecture achieves, with their spread
    recorded beside it."""
    from suite.eval import cpu_threads
    from suite.models import build_backbone

    runs: list[dict[str, Any]] = []
    for seed in floor_seeds(cell):
        torch.manual_seed(seed)
        fresh, _ = build_backbone(
            cell.backbone, image_size=cell.dataset.image_size, cifar_stem=cell.cifar_stem
        )
        fresh.to(device)
        if channels_last:
            fresh.to(memory_format=torch.channels_last)
        if cell.eval.floor_bn == "calibrated":
            bs = max(cell.eval.linear.batch_size, EXTRACT_BATCH)
            with cpu_threads(eval_cpu_threads(device), device):
                calibrate_bn(fresh, data.eval_batches("train", bs), device, channels_last, dtype)
        # each init is probed with its own seed (one init: the cell's own, so the same cell)
        probed = cell.replace(seed=seed)
        runs.append(
            probe_encoder(probed, fresh, data, device, channels_last, dtype, "_random_init")
        )
        del fresh
    if len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = torch.tensor([float(r[key]) for r in runs], dtype=torch.float64)
        if key.startswith("eval/"):
            out[key] = float(values.sum())
        else:
            out[key] = float(values.mean())
            out[key + "_std"] = float(values.std())
    return out
