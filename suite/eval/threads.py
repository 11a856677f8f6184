"""Torch intra-op threads for evaluation on a CPU: every core the process may use.

Every step of a cell's evaluation (feature extraction, kNN, linear probe) takes ``cpu_threads``
with the same meaning, applied with :func:`cpu_threads`; the cell's evaluation passes
:func:`eval_threads`, whatever thread count its process trained with (``torchrun`` starts each
rank with one thread, a user may have set ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one, else the count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def eval_threads() -> int:
    """Torch intra-op threads for evaluation on a CPU: every available core (``taskset`` or a
    cgroup cpuset restricts them)."""
    return available_cpus()


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads when it computes on the CPU
    (``device`` is a CPU device or None), then restore the previous count. ``threads=None`` or a
    CUDA ``device`` leaves the setting alone."""
    if threads is not None and threads < 1:
        raise ValueError(f"cpu_threads: {threads}; expected None or >= 1")
    on_cpu = device is None or torch.device(device).type == "cpu"
    previous = torch.get_num_threads()
    if threads is not None and on_cpu and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
