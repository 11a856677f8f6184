"""The cached linear probe per epoch against its floor, on the CPU and on CUDA when there is one.

The problem has ImageNet's shape per step — batch 256 of ResNet-50 features (D = 2048), 1,000
classes — over ``BNSUITE_BENCH_LINEAR_ROWS`` train rows (default 25,600: 100 steps, 1/50 of an
ImageNet epoch; per-epoch time scales linearly in the rows) and 5,000 test rows scored once per
epoch, as the probe does.

Run::

    pytest tests/benchmarks/test_bench_linear.py --benchmark-only --benchmark-group-by=group

Group ``linear-epoch-<device>``: ``test_bench_linear_floor_epoch`` times what one epoch is bound
by — per step the logits product ``h·Wᵀ`` and the weight gradient ``Gᵀ·h`` on contiguous
batches, then the test logits — and ``test_bench_linear_probe_epoch`` one epoch of
``suite.eval.linear_probe`` (gather of a shuffled batch, BatchNorm on the features, softmax,
SGD with momentum, the evaluation); its ``extra_info["vs_floor"]`` is the ratio of the means. On
the CPU both run with every core (:func:`suite.eval.eval_threads`), as a cell's evaluation does.
"""

from __future__ import annotations

import os

import pytest
import torch

from suite.eval import cpu_threads, eval_threads, linear_probe

ROWS = int(os.environ.get("BNSUITE_BENCH_LINEAR_ROWS", str(256 * 100)))
TEST_ROWS, DIM, NUM_CLASSES, BATCH = 5_000, 2048, 1000, 256
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


@pytest.fixture(scope="module")
def problem() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "train_x": torch.randn(ROWS, DIM, generator=g),
        "train_y": torch.randint(0, NUM_CLASSES, (ROWS,), generator=g),
        "test_x": torch.randn(TEST_ROWS, DIM, generator=g),
        "test_y": torch.randint(0, NUM_CLASSES, (TEST_ROWS,), generator=g),
    }


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    """Mean seconds of the floors measured so far in this module."""
    return {}


def _timed(fn, device: str):
    """``fn`` with every core on the CPU, or followed by a wait for the GPU."""

    def run():
        with cpu_threads(eval_threads() if device == "cpu" else None, device):
            out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


@pytest.mark.parametrize("device", DEVICES)
def test_bench_linear_floor_epoch(benchmark, problem, timings, device):
    """The products one epoch of the probe is bound by: ROWS / 256 steps of h·Wᵀ + b and Gᵀ·h,
    then the test logits."""
    benchmark.group = f"linear-epoch-{device}"
    x = problem["train_x"].to(device)
    test_x = problem["test_x"].to(device)
    weight = torch.randn(NUM_CLASSES, DIM, device=device) * 0.01
    bias = torch.zeros(NUM_CLASSES, device=device)
    batches = torch.split(x, BATCH)

    def epoch():
        for h in batches:
            g = torch.addmm(bias, h, weight.T)
            weight.sub_(g.T @ h, alpha=1e-9)
        return torch.addmm(bias, test_x, weight.T)

    benchmark.pedantic(_timed(epoch, device), rounds=3, iterations=1, warmup_rounds=1)
    timings[f"floor_{device}"] = benchmark.stats.stats.mean
    benchmark.extra_info.update(rows=ROWS, steps=len(batches), dim=DIM, classes=NUM_CLASSES)


@pytest.mark.parametrize("device", DEVICES)
def test_bench_linear_probe_epoch(benchmark, problem, timings, device):
    """One epoch of suite.eval.linear_probe (cached protocol, BN on the features, batch 256,
    evaluated after the epoch) on ``device``; vs_floor = its mean / the floor's."""
    benchmark.group = f"linear-epoch-{device}"
    tensors = {k: v.to(device) for k, v in problem.items()}

    def epoch():
        return linear_probe(
            tensors["train_x"],
            tensors["train_y"],
            tensors["test_x"],
            tensors["test_y"],
            num_classes=NUM_CLASSES,
            epochs=1,
            batch_size=BATCH,
            cpu_threads=eval_threads() if device == "cpu" else None,
        )

    benchmark.pedantic(_timed(epoch, device), rounds=3, iterations=1, warmup_rounds=1)
    steps = -(-ROWS // BATCH)
    benchmark.extra_info.update(
        rows=ROWS, steps=steps, step_ms=1e3 * benchmark.stats.stats.mean / steps
    )
    if f"floor_{device}" in timings:
        benchmark.extra_info["vs_floor"] = benchmark.stats.stats.mean / timings[f"floor_{device}"]
