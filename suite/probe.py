"""Evaluate a trained cell: cached features of the chosen encoder → weighted kNN and linear probe.

Every accuracy has its floor beside it: the same probes on the random-init encoder of the same
backbone and data (``knn/top1_random_init``, ``linear/top1_random_init``), whose BatchNorm
statistics are calibrated on the training split first (:func:`calibrate_bn`), as a trained
encoder's are: the floor then measures what training added, not what the statistics add.
Accuracies are fractions in [0, 1]; the protocol (k, T, linear epochs, encoder, floor) is part of
the cell's params.

Features of the trained encoder that break the divergence rule of :mod:`suite.finite` (NaN, inf,
``|x| >= 2**64``) fail the cell with :class:`suite.train.TrainingDiverged`; the probes themselves
refuse such input too, so no accuracy is ever computed from them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from suite import runtime
from suite.cell import CellConfig


def _features(encoder: nn.Module, data, device, channels_last: bool, dtype, batch_size: int):
    """Cached (features, labels) of the train and test splits, without augmentation."""
    from suite.eval import extract_features

    return tuple(
        extract_features(
            encoder,
            data.eval_batches(split, batch_size),
            device=device,
            channels_last=channels_last,
            autocast_dtype=dtype,
        )
        for split in ("train", "test")
    )


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


def probe_features(cell: CellConfig, train, test, num_classes: int, suffix: str = "") -> dict:
    """kNN and linear probe on cached (features, labels) pairs."""
    from suite.eval import knn_accuracy, linear_probe

    (train_x, train_y), (test_x, test_y) = train, test
    knn = knn_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        k=cell.eval.knn_k,
        temperature=cell.eval.knn_temperature,
        num_classes=num_classes,
    )
    out = {f"knn/top1{suffix}": knn["top1"]}
    if "top5" in knn:
        out[f"knn/top5{suffix}"] = knn["top5"]
    if cell.eval.linear_epochs > 0:
        lin = linear_probe(
            train_x,
            train_y,
            test_x,
            test_y,
            num_classes=num_classes,
            epochs=cell.eval.linear_epochs,
            lr=cell.eval.linear_lr,
            batch_size=cell.eval.linear_batch_size,
            seed=cell.seed,
        )
        out[f"linear/top1{suffix}"] = lin["top1"]
        out[f"linear/best_top1{suffix}"] = lin["best_top1"]
        if "top5" in lin:
            out[f"linear/top5{suffix}"] = lin["top5"]
    return out


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
    """Probe the cell's evaluated encoder, and the random-init floor when asked for."""
    from suite.models import build_backbone

    dtype = runtime.autocast_dtype(device, cell.precision)
    bs = max(cell.eval.linear_batch_size, 256)
    encoder = method.encoder(cell.eval_encoder)
    train, test = _features(encoder, data, device, channels_last, dtype, bs)
    check_features(cell, train[0], test[0])
    metrics = probe_features(cell, train, test, data.num_classes)
    metrics["eval/feature_dim"] = train[0].shape[1]
    if cell.eval.random_init_floor:
        torch.manual_seed(cell.seed)
        fresh, _ = build_backbone(
            cell.backbone, image_size=cell.data.image_size, cifar_stem=cell.method.cifar_stem
        )
        fresh.to(device)
        if channels_last:
            fresh.to(memory_format=torch.channels_last)
        if cell.eval.floor_bn == "calibrated":
            calibrate_bn(fresh, data.eval_batches("train", bs), device, channels_last, dtype)
        train0, test0 = _features(fresh, data, device, channels_last, dtype, bs)
        metrics.update(probe_features(cell, train0, test0, data.num_classes, "_random_init"))
    return metrics
