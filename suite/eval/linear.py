"""Linear probe: a linear classifier trained on cached frozen features (``eval.linear.protocol:
cached``, the default; the standard protocol on augmented images is :mod:`suite.eval.augmented`).

The model is ``logits = W · norm(x) + b`` trained with cross-entropy by SGD with momentum and a
per-iteration cosine learning rate ``lr_t = lr · (1 + cos(π t / T_total)) / 2`` (``t`` steps
done of ``T_total = epochs × batches per epoch``; no warm-up), from ``W ~ N(0, 0.01²)``, ``b = 0``.

``norm`` conditions the features, whose scale differs wildly between encoders (a random-init
encoder and a trained one), so that one learning rate suits all of them:

- ``"bn"`` (default): ``BatchNorm1d(D, affine=False)`` on the features, batch statistics while
  training, the average of all batches' statistics (``momentum=None``) at evaluation;
- ``"standardize"``: ``(x − μ)/sqrt(σ² + ε)``, ``μ`` and ``σ²`` from the train features, applied
  once before training;
- ``None``: raw features.

The official M2T linear evaluation instead puts a BatchNorm1d on the *logits* of ``Linear(2048,
1000)``. At evaluation both are a fixed affine map composed with a linear layer, i.e. the same
hypothesis class (a linear classifier); BN on the features is used here because it conditions the
optimisation problem itself (the features the SGD sees are zero-mean, unit-variance) rather than
the output scale, and it does not depend on the number of classes. Results are fractions in
[0, 1]; ``best_top1`` (the best test top-1 over the per-epoch evaluations, as the official code
reports) is recorded beside the final ``top1``.

Features are cached (:func:`suite.eval.features.extract_features`): every epoch reuses them, as
tensors indexed by a seeded permutation, without a DataLoader. On the CPU with a fixed thread
count the result is a deterministic function of the inputs and ``seed``. Features that break
:mod:`suite.finite`'s rule (NaN, inf, ``|x| >= 2**64``) are refused with a ValueError.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from suite.eval.features import topk_accuracy
from suite.eval.threads import cpu_threads as threads_for
from suite.finite import check_features

NORMALIZATIONS = ("bn", "standardize", None)
STANDARDIZE_EPS = 1e-5


def _check(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    epochs: int,
    lr: float,
    batch_size: int,
    normalize: str | None,
    eval_every: int,
) -> None:
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train_x/test_x: shapes {tuple(train_x.shape)} and {tuple(test_x.shape)}; "
            "expected [N, D] and [M, D] with the same D"
        )
    check_features(train_x, "train_x")
    check_features(test_x, "test_x")
    for name, x, y in (("train_y", train_x, train_y), ("test_y", test_x, test_y)):
        if y.shape != x.shape[:1]:
            raise ValueError(f"{name}: shape {tuple(y.shape)}; expected [{x.shape[0]}]")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{name}: values span {int(y.min())}..{int(y.max())}; expected "
                f"0..{num_classes - 1} (num_classes={num_classes})"
            )
    if num_classes < 2:
        raise ValueError(f"num_classes: {num_classes}; expected >= 2")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: {normalize!r}; valid choices are {NORMALIZATIONS}")
    if train_x.shape[0] < (2 if normalize == "bn" else 1):
        raise ValueError(
            f"train_x: {train_x.shape[0]} rows; need at least 2 for normalize='bn' (1 otherwise)"
        )
    if epochs < 1:
        raise ValueError(f"epochs: {epochs}; expected >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size}; expected >= 1")
    if not lr > 0:
        raise ValueError(f"lr: {lr}; expected > 0")
    if eval_every < 1:
        raise ValueError(f"eval_every: {eval_every}; expected >= 1")


def _num_batches(num_rows: int, batch_size: int, normalize: str | None) -> int:
    """``ceil(N / batch_size)`` batches of near-equal size; for BN no batch is smaller than 2."""
    count = math.ceil(num_rows / batch_size)
    return min(count, num_rows // 2) if normalize == "bn" else count


def cross_entropy_grad(
    h: Tensor, y: Tensor, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cross-entropy of ``z = h·Wᵀ + b`` and its gradient, in closed form (no autograd).

    ``L = (1/B) Σ_i [logsumexp(z_i) − z_{i, y_i}]``, ``G = (softmax(z) − onehot(y)) / B``,
    ``∂L/∂W = Gᵀ·h``, ``∂L/∂b = Σ_i G_i``. Returns ``(∂L/∂W, ∂L/∂b, L)``.
    """
    log_p = torch.addmm(bias, h, weight.T).log_softmax(dim=1)
    picked = y.unsqueeze(1)
    loss = -log_p.gather(1, picked).mean()
    g = log_p.exp_()
    g.scatter_add_(1, picked, torch.full_like(picked, -1, dtype=g.dtype)).div_(h.shape[0])
    return g.T @ h, g.sum(dim=0), loss


@torch.no_grad()
def _fit_and_score(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    norm: nn.Module,
    generator: torch.Generator,
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    num_batches: int,
    weight_decay: float,
    momentum: float,
    eval_every: int,
) -> dict[str, Any]:
    """The SGD loop of :func:`linear_probe` on prepared tensors (one device, float32)."""
    device, dim = x_train.device, x_train.shape[1]
    weight = torch.randn(num_classes, dim, generator=generator).mul_(0.01).to(device)
    bias = torch.zeros(num_classes, device=device)
    velocity = [torch.zeros_like(weight), torch.zeros_like(bias)]
    num_rows = x_train.shape[0]
    total_steps = epochs * num_batches
    ks = (1, 5) if num_classes >= 5 else (1,)
    step = 0
    best_top1, best_epoch = -1.0, 0
    accuracy: dict[int, float] = {}
    train_loss = torch.zeros((), device=device)
    for epoch in range(1, epochs + 1):
        norm.train()
        train_loss = torch.zeros((), device=device)
        # drawn on the CPU (the same order on every device), copied without a stream sync
        order = torch.randperm(num_rows, generator=generator).to(device, non_blocking=True)
        for rows in torch.tensor_split(order, num_batches):
            step_lr = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            grad_w, grad_b, loss = cross_entropy_grad(
                norm(x_train[rows]), y_train[rows], weight, bias
            )
            for param, grad, buf in ((weight, grad_w, velocity[0]), (bias, grad_b, velocity[1])):
                if weight_decay:
                    grad.add_(param, alpha=weight_decay)
                torch.add(grad, buf, alpha=momentum, out=buf)  # v = g + momentum·v, one pass
                param.add_(buf, alpha=-step_lr)
            train_loss += loss * rows.shape[0]
            step += 1
        if epoch % eval_every == 0 or epoch == epochs:
            norm.eval()
            accuracy = topk_accuracy(torch.addmm(bias, norm(x_test), weight.T), y_test, ks)
            if accuracy[1] > best_top1:
                best_top1, best_epoch = accuracy[1], epoch
    result: dict[str, Any] = {f"top{k}": v for k, v in accuracy.items()}
    result.update(
        best_top1=best_top1, best_epoch=best_epoch, train_loss=float(train_loss) / num_rows
    )
    return result


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    device: torch.device | str | None = None,
    normalize: str | None = "bn",
    eval_every: int = 1,
    cpu_threads: int | None = 1,
) -> dict[str, Any]:
    """Train a linear classifier on cached features; return its test accuracy (module docstring).

    One step on minibatch ``(h, y)`` is SGD with momentum, as ``torch.optim.SGD``::

        g = ∂L/∂θ + weight_decay·θ    (cross_entropy_grad; decay on W and b)
        v = momentum·v + g,           θ = θ − lr_t·v

    Each epoch visits the train rows in a fresh seeded permutation, split into ``ceil(N /
    batch_size)`` near-equal minibatches (``batch_size >= N`` is full-batch gradient descent).
    The test set is evaluated every ``eval_every`` epochs and after the last one.

    ``device`` defaults to ``train_x``'s device; the probe runs there, features, labels and
    parameters included, and reads the accuracy once per evaluation. On the CPU it runs with
    ``cpu_threads`` intra-op threads (restored afterwards; ``None`` keeps the current setting,
    :mod:`suite.eval.threads`). The default 1 suits small probes, whose steps are too small to
    gain from threads (OpenMP synchronisation per op costs more, badly so on a busy machine), and
    makes the result independent of the machine's core count; a cell's evaluation passes every
    core instead (ImageNet-size steps do gain from them).

    Returns a dict with fractions in [0, 1]: ``top1`` and ``top5`` (top-5 only when ``num_classes
    >= 5``) after the last epoch, ``best_top1`` and its 1-based ``best_epoch`` over the
    evaluations, ``train_loss`` (mean cross-entropy of the last epoch), and the protocol:
    ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``momentum``, ``seed``, ``normalize``
    (``"none"`` for ``None``), ``protocol="cached"``.
    """
    _check(
        train_x, train_y, test_x, test_y, num_classes, epochs, lr, batch_size, normalize, eval_every
    )
    run_device = torch.device(device) if device is not None else train_x.device
    with threads_for(cpu_threads, run_device), torch.no_grad():
        x_train = train_x.to(run_device, torch.float32)
        x_test = test_x.to(run_device, torch.float32)
        norm: nn.Module = nn.Identity()
        if normalize == "standardize":
            mean = x_train.mean(dim=0)
            scale = x_train.var(dim=0, unbiased=False).add(STANDARDIZE_EPS).rsqrt()
            x_train = (x_train - mean) * scale
            x_test = (x_test - mean) * scale
        elif normalize == "bn":
            norm = nn.BatchNorm1d(x_train.shape[1], affine=False, momentum=None).to(run_device)
        result = _fit_and_score(
            x_train,
            train_y.to(run_device, torch.long),
            x_test,
            test_y.to(run_device, torch.long),
            norm,
            torch.Generator().manual_seed(seed),
            num_classes=num_classes,
            epochs=epochs,
            lr=lr,
            num_batches=_num_batches(x_train.shape[0], batch_size, normalize),
            weight_decay=weight_decay,
            momentum=momentum,
            eval_every=eval_every,
        )
    result.update(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        momentum=momentum,
        seed=seed,
        normalize="none" if normalize is None else normalize,
        protocol="cached",
    )
    return result
