"""The standard linear evaluation: a linear classifier trained on augmented images through the
frozen encoder (``eval.linear.protocol: augmented``).

This is how MoCo's linear evaluation and the official Momentum² Teacher evaluation
(``momentum_teacher/tools/eval.py``) measure the ImageNet numbers of the papers:

- every epoch, every train image once, as a fresh RandomResizedCrop(S) + horizontal flip
  (:class:`suite.data.augment.CropFlip`), through the encoder in eval mode (BatchNorm uses its
  running statistics; no gradient, weights and buffers untouched);
- the classifier of the official code, ``Linear(D, C)`` (``W ~ N(0, 0.01²)``, ``b = 0``)
  followed by ``BatchNorm1d(C)`` on the logits, trained with cross-entropy by SGD with momentum
  (weight decay 0 by default), the learning rate set per iteration: ``cosine``
  ``lr_t = lr · (1 + cos(π t / T))/2`` (the official BYOL-style evaluation: 80 epochs, lr 0.2 at
  batch 256) or ``step`` ``lr · 0.1^(milestones passed)`` (MoCo's: 100 epochs, lr 30, ×0.1 at
  epochs 60 and 80);
- evaluated on the centre-resized test images (Resize + CenterCrop, no augmentation) every
  ``eval_every`` epochs and after the last; ``best_top1`` is the best of these, as the official
  code reports, ``top1``/``top5`` the last.

The test images never change and the encoder is frozen in eval mode, so their features are
computed once (``test_x``, the cached features the kNN uses too) and each evaluation only runs the
classifier on them: the same numbers as running the encoder on the test set every time.

Everything runs on the encoder's device; the per-iteration host work is the learning rate (a
Python float) and the next batch's crop parameters, and the host reads the accuracy once per
evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from suite.eval.features import _encoder_device, encoder_input, topk_hits
from suite.eval.threads import cpu_threads as threads_for
from suite.finite import check_features
from suite.runtime import autocast_to

SCHEDULES = ("cosine", "step")
EVAL_ROWS = 8192  # test rows per classifier forward at evaluation


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    steps_per_epoch: int,
    schedule: str,
    milestones: Sequence[int],
) -> float:
    """The learning rate of iteration ``step`` (0-based): ``cosine`` or ``step`` (module
    docstring); ``step`` decays ×0.1 from the first iteration of each milestone epoch."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    passed = sum(step >= m * steps_per_epoch for m in milestones)
    return lr * 0.1**passed


def _check(
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    epochs: int,
    lr: float,
    steps_per_epoch: int,
    schedule: str,
    milestones: Sequence[int],
    eval_every: int,
) -> None:
    if test_x.dim() != 2:
        raise ValueError(f"test_x: shape {tuple(test_x.shape)}; expected [M, D]")
    check_features(test_x, "test_x")
    if test_y.shape != test_x.shape[:1]:
        raise ValueError(f"test_y: shape {tuple(test_y.shape)}; expected [{test_x.shape[0]}]")
    if num_classes < 2:
        raise ValueError(f"num_classes: {num_classes}; expected >= 2")
    if test_y.numel() and (int(test_y.min()) < 0 or int(test_y.max()) >= num_classes):
        raise ValueError(
            f"test_y: values span {int(test_y.min())}..{int(test_y.max())}; expected "
            f"0..{num_classes - 1} (num_classes={num_classes})"
        )
    if epochs < 1:
        raise ValueError(f"epochs: {epochs}; expected >= 1")
    if not lr > 0:
        raise ValueError(f"lr: {lr}; expected > 0")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: {steps_per_epoch}; expected >= 1")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: {schedule!r}; valid choices are {', '.join(SCHEDULES)}")
    if schedule == "step" and any(not 0 < m <= epochs for m in milestones):
        raise ValueError(f"milestones: {list(milestones)}; expected epochs in 1..{epochs}")
    if eval_every < 1:
        raise ValueError(f"eval_every: {eval_every}; expected >= 1")


def build_classifier(dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    """``Linear(dim, C)`` with ``W ~ N(0, 0.01²)`` (drawn from ``generator``), ``b = 0``, then
    ``BatchNorm1d(C)``: the official linear evaluation's classifier."""
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(num_classes, dim, generator=generator).mul_(0.01))
        linear.bias.zero_()
    return nn.Sequential(linear, nn.BatchNorm1d(num_classes))


@torch.no_grad()
def _score(head: nn.Module, test_x: Tensor, test_y: Tensor, ks: tuple[int, ...]) -> list[float]:
    head.eval()
    hits = torch.zeros(len(ks), dtype=torch.long, device=test_x.device)
    for start in range(0, test_x.shape[0], EVAL_ROWS):
        logits = head(test_x[start : start + EVAL_ROWS])
        hits += topk_hits(logits, test_y[start : start + EVAL_ROWS], ks)
    head.train()
    total = test_x.shape[0]
    return [c / total if total else 0.0 for c in hits.tolist()]


def linear_probe_augmented(
    encoder: nn.Module,
    train_epoch: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int,
    steps_per_epoch: int,
    epochs: int = 80,
    lr: float = 0.2,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    milestones: Sequence[int] = (60, 80),
    seed: int = 0,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    eval_every: int = 1,
    cpu_threads: int | None = None,
) -> dict[str, Any]:
    """Train the official linear classifier on augmented images through the frozen ``encoder``;
    return its accuracy on the cached test features (module docstring).

    Args:
        train_epoch: ``epoch → batches (images, labels)`` of augmented train images, every
            sample once per epoch, ``steps_per_epoch`` batches of >= 2 rows each
            (:meth:`suite.data.DataBundle.linear_epoch`).
        test_x, test_y: the encoder's features of the centre-resized test images
            (:func:`suite.eval.extract_features`) and their labels, on ``device``.
        device: where the encoder and the classifier run; default the encoder's device.
        channels_last, autocast_dtype: as in :func:`suite.eval.extract_features`; the classifier
            always runs in float32.
        cpu_threads: torch intra-op threads while running on the CPU (restored afterwards);
            None keeps the current setting (:mod:`suite.eval.threads`).

    Returns a dict with fractions in [0, 1]: ``top1`` (and ``top5`` when ``num_classes >= 5``)
    after the last epoch, ``best_top1`` and its 1-based ``best_epoch``, ``train_loss`` (mean
    cross-entropy of the last epoch), and the protocol: ``protocol="augmented"``, ``epochs``,
    ``lr``, ``momentum``, ``weight_decay``, ``schedule``, ``milestones`` (step only), ``seed``,
    ``head="linear+bn"``.
    """
    milestones = tuple(int(m) for m in milestones)
    _check(
        test_x, test_y, num_classes, epochs, lr, steps_per_epoch, schedule, milestones, eval_every
    )
    run_device = torch.device(device) if device is not None else _encoder_device(encoder)
    test_x = test_x.to(run_device, torch.float32)
    test_y = test_y.to(run_device, torch.long)
    ks = (1, 5) if num_classes >= 5 else (1,)
    head = build_classifier(test_x.shape[1], num_classes, torch.Generator().manual_seed(seed))
    head.to(run_device).train()
    optimizer = torch.optim.SGD(
        head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    total_steps = epochs * steps_per_epoch
    states = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    step, best_top1, best_epoch = 0, -1.0, 0
    accuracy: list[float] = []
    train_loss = torch.zeros((), device=run_device)
    rows = 0
    try:
        with threads_for(cpu_threads, run_device):
            for epoch in range(1, epochs + 1):
                train_loss = torch.zeros((), device=run_device)
                rows = 0
                for index, (images, labels) in enumerate(train_epoch(epoch - 1)):
                    if index >= steps_per_epoch:
                        raise ValueError(
                            f"train_epoch: epoch {epoch - 1} yielded more than "
                            f"steps_per_epoch={steps_per_epoch} batches"
                        )
                    images = encoder_input(images, run_device, channels_last)
                    labels = labels.to(run_device, torch.long, non_blocking=True)
                    with torch.no_grad(), autocast_to(run_device, autocast_dtype):
                        features = encoder(images)
                    features = features.reshape(features.shape[0], -1).float()
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(
                            step,
                            lr=lr,
                            total_steps=total_steps,
                            steps_per_epoch=steps_per_epoch,
                            schedule=schedule,
                            milestones=milestones,
                        )
                    loss = F.cross_entropy(head(features), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    train_loss += loss.detach() * labels.shape[0]
                    rows += labels.shape[0]
                    step += 1
                if step != epoch * steps_per_epoch:
                    done = step - (epoch - 1) * steps_per_epoch
                    raise ValueError(
                        f"train_epoch: epoch {epoch - 1} yielded {done} batches, expected "
                        f"steps_per_epoch={steps_per_epoch}"
                    )
                if epoch % eval_every == 0 or epoch == epochs:
                    accuracy = _score(head, test_x, test_y, ks)
                    if accuracy[0] > best_top1:
                        best_top1, best_epoch = accuracy[0], epoch
    finally:
        # Pre-order: a parent's train() resets its children, which are then set to their own state.
        for module, training in states:
            module.train(training)
    result: dict[str, Any] = {f"top{k}": v for k, v in zip(ks, accuracy, strict=True)}
    result.update(
        best_top1=best_top1,
        best_epoch=best_epoch,
        train_loss=float(train_loss) / max(rows, 1),
        protocol="augmented",
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        head="linear+bn",
    )
    if schedule == "step":
        result["milestones"] = list(milestones)
    return result
