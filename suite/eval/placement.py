"""Where a cell's evaluation keeps its features: on the cell's device when they fit.

A cell is evaluated on the device it trained on. Its cached features stay on that device when the
probes' peak working set fits in the device's free memory (:func:`plan_features`); otherwise they
are gathered on the CPU and the probes run there, and the plan says why. The working set is
estimated, not measured, from what the probes hold at their peak (float32, ``D`` = feature
width, ``N``/``M`` = train/test rows)::

    features of both splits         4·D·(N + M)
    kNN's normalised train copy     4·D·N          (the linear probe's buffers are smaller)
    one kNN similarity block        DEFAULT_BLOCK_BYTES

ImageNet with a ResNet-50 (N = 1.28M, M = 50k, D = 2048) needs about 21 GB: it stays on a GPU
with that much free memory. On a CPU the evaluation uses every core the process may run on
(:mod:`suite.eval.threads`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suite.eval.knn import DEFAULT_BLOCK_BYTES

DEVICE_MEMORY_FRACTION = 0.9
"""Share of the device's free memory the estimated working set may take (the rest is headroom
for the encoder's activations during extraction and for the allocator's fragmentation)."""

FEATURE_BYTES = 4  # float32


def working_set_bytes(num_train: int, num_test: int, dim: int) -> int:
    """The estimated peak bytes of cached features and probes (module docstring)."""
    return FEATURE_BYTES * dim * (2 * num_train + num_test) + DEFAULT_BLOCK_BYTES


def device_free_bytes(device: torch.device) -> int:
    """Memory a new tensor can take on CUDA ``device``: the driver's free memory plus what torch's
    caching allocator holds reserved but unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class FeaturePlan:
    """Where the cached features and the probes live, and why."""

    device: torch.device  # where the features are kept
    cell_device: torch.device  # where the cell ran
    bytes: int  # estimated working set
    free_bytes: int | None  # free memory of the cell's accelerator (None for a CPU cell)
    reason: str

    @property
    def on_cell_device(self) -> bool:
        return self.device == self.cell_device


def plan_features(
    device: torch.device | str,
    num_train: int,
    num_test: int,
    dim: int,
    *,
    free_bytes: int | None = None,
) -> FeaturePlan:
    """Keep the features on ``device`` when the working set fits in ``DEVICE_MEMORY_FRACTION`` of
    its free memory (``free_bytes``, default :func:`device_free_bytes`); else on the CPU, with the
    numbers in the reason. A CPU cell's features are on the CPU, its own device."""
    device = torch.device(device)
    need = working_set_bytes(num_train, num_test, dim)
    what = f"{num_train} + {num_test} rows × {dim} float32 and the probes' buffers: {_gib(need)}"
    if device.type != "cuda":
        return FeaturePlan(device, device, need, None, f"on the cell's device ({device}): {what}")
    if free_bytes is None:
        free_bytes = device_free_bytes(device)
    budget = int(DEVICE_MEMORY_FRACTION * free_bytes)
    if need <= budget:
        return FeaturePlan(
            device,
            device,
            need,
            free_bytes,
            f"on the cell's device ({device}): {what}, {_gib(free_bytes)} free",
        )
    return FeaturePlan(
        torch.device("cpu"),
        device,
        need,
        free_bytes,
        f"on the CPU, not {device}: {what}, more than {DEVICE_MEMORY_FRACTION:.0%} of the "
        f"{_gib(free_bytes)} free on {device}",
    )
