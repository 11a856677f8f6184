"""Weighted cosine kNN: suite.eval.knn_classify vs scikit-learn's brute-force KNeighborsClassifier.

The task (both sides): 50,000 train × 512 random float32 features with 10 random classes; predict
test rows by the InstDisc vote, k = 200, weight exp(s/T) with s = cosine similarity, T = 0.1.
scikit-learn gets ``metric="cosine"`` (distance d = 1 − s) and ``weights=lambda d: exp((1 − d)/T)``,
which is the same vote.

Run::

    pytest tests/benchmarks/test_bench_knn.py --benchmark-only -q

The target size is 10,000 test rows. scikit-learn's brute-force predict costs about 3 s per
1,000 test rows on two cores, so both libraries are timed on the same 2,000-row subset (group
``knn-2k``, the ratio of the two means is the speed-up); the suite is also timed on all 10,000
rows (group ``knn-10k``), and the scikit-learn time scaled linearly to 10,000 rows is recorded in
that benchmark's ``extra_info`` (predict cost is linear in the test rows: every test row is
compared with every train row). ``BNSUITE_BENCH_SUBSET`` changes the subset size.

The floor (group ``knn-floor-<device>``, on the CPU and on CUDA when there is one): kNN of
10,000 × 50,000 × 512 against the bare matrix product it is bound by — the same test × train
similarity products, normalised features prepared beforehand, in the same chunks into the same
preallocated block (the memory budget of the vote), nothing else. ``extra_info["vs_floor"]`` of
the kNN benchmark is mean kNN time / mean floor time (1.0 would be the vote for free); what the
vote adds is the normalisation, the top-k and the weighted scatter.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from suite.eval import knn_chunk_size, knn_classify

NUM_TRAIN, NUM_TEST, DIM, NUM_CLASSES = 50_000, 10_000, 512, 10
K, TEMPERATURE = 200, 0.1
SUBSET = int(os.environ.get("BNSUITE_BENCH_SUBSET", "2000"))
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
        "train": torch.randn(NUM_TRAIN, DIM, generator=g),
        "labels": torch.randint(0, NUM_CLASSES, (NUM_TRAIN,), generator=g),
        "test": torch.randn(NUM_TEST, DIM, generator=g),
    }


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    """Mean seconds of the benchmarks run so far in this module, shared between them."""
    return {}


def sklearn_classifier(problem):
    from sklearn.neighbors import KNeighborsClassifier

    def weights(distance: np.ndarray) -> np.ndarray:
        return np.exp((1.0 - distance) / TEMPERATURE)

    clf = KNeighborsClassifier(n_neighbors=K, algorithm="brute", metric="cosine", weights=weights)
    return clf.fit(problem["train"].numpy(), problem["labels"].numpy())


@pytest.mark.benchmark(group="knn-2k")
def test_bench_knn_sklearn_subset(benchmark, problem, timings):
    """scikit-learn, brute force, on the first SUBSET test rows."""
    clf = sklearn_classifier(problem)
    test = problem["test"][:SUBSET].numpy()
    preds = benchmark.pedantic(clf.predict, args=(test,), rounds=2, iterations=1)
    timings["sklearn_subset"] = benchmark.stats.stats.mean
    ours = knn_classify(
        problem["train"], problem["labels"], problem["test"][:SUBSET], k=K, temperature=TEMPERATURE
    )
    agreement = float((torch.from_numpy(preds) == ours).double().mean())
    benchmark.extra_info.update(test_rows=SUBSET, agreement_with_suite=agreement)
    # Same task: float32 rounding may swap the 200th neighbour of a few rows, nothing more.
    assert agreement >= 0.98


@pytest.mark.benchmark(group="knn-2k")
def test_bench_knn_suite_subset(benchmark, problem, timings):
    """suite.eval.knn_classify on the same SUBSET test rows."""
    benchmark.pedantic(
        knn_classify,
        args=(problem["train"], problem["labels"], problem["test"][:SUBSET]),
        kwargs={"k": K, "temperature": TEMPERATURE},
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    timings["suite_subset"] = benchmark.stats.stats.mean
    benchmark.extra_info.update(test_rows=SUBSET)
    if "sklearn_subset" in timings:
        benchmark.extra_info["speedup_vs_sklearn"] = (
            timings["sklearn_subset"] / timings["suite_subset"]
        )


@pytest.mark.benchmark(group="knn-10k")
def test_bench_knn_suite_full(benchmark, problem, timings):
    """suite.eval.knn_classify on all 10,000 test rows; sklearn's subset time scaled ×10k/SUBSET."""
    benchmark.pedantic(
        knn_classify,
        args=(problem["train"], problem["labels"], problem["test"]),
        kwargs={"k": K, "temperature": TEMPERATURE},
        rounds=2,
        iterations=1,
    )
    benchmark.extra_info.update(test_rows=NUM_TEST)
    if "sklearn_subset" in timings:
        scaled = timings["sklearn_subset"] * NUM_TEST / SUBSET
        benchmark.extra_info.update(
            sklearn_scaled_s=scaled, speedup_vs_sklearn_scaled=scaled / benchmark.stats.stats.mean
        )


def _synchronised(fn, device: str):
    """``fn`` followed by a wait for the device, so that a timing covers the work done."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.mark.parametrize("device", DEVICES)
def test_bench_knn_floor_matmul(benchmark, problem, timings, device):
    """The floor: the test × train similarity products of the vote alone (normalised features
    given), in the vote's chunks into its preallocated block."""
    benchmark.group = f"knn-floor-{device}"
    train = F.normalize(problem["train"].to(device), dim=1)
    test = F.normalize(problem["test"].to(device), dim=1)
    chunk = knn_chunk_size(NUM_TRAIN)
    block = torch.empty(chunk, NUM_TRAIN, device=device)

    def products():
        for start in range(0, NUM_TEST, chunk):
            query = test[start : start + chunk]
            torch.mm(query, train.T, out=block[: query.shape[0]])

    benchmark.pedantic(_synchronised(products, device), rounds=3, iterations=1, warmup_rounds=1)
    timings[f"floor_{device}"] = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        test_rows=NUM_TEST, train_rows=NUM_TRAIN, dim=DIM, chunk_rows=chunk, device=device
    )


@pytest.mark.parametrize("device", DEVICES)
def test_bench_knn_against_its_floor(benchmark, problem, timings, device):
    """suite.eval.knn_classify on all 10,000 test rows on ``device``; vs_floor = its mean time /
    the floor's (test_bench_knn_floor_matmul, same device, run first)."""
    benchmark.group = f"knn-floor-{device}"
    train, labels, test = (problem[k].to(device) for k in ("train", "labels", "test"))

    def vote():
        return knn_classify(train, labels, test, k=K, temperature=TEMPERATURE)

    benchmark.pedantic(_synchronised(vote, device), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(test_rows=NUM_TEST, train_rows=NUM_TRAIN, dim=DIM, device=device)
    if f"floor_{device}" in timings:
        benchmark.extra_info["vs_floor"] = benchmark.stats.stats.mean / timings[f"floor_{device}"]
