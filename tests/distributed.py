"""Run a function in W gloo processes on this CPU (the suite's own multi-process test harness)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, store: str, fn, out_dir: str, args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_gloo(fn, world: int, tmp_path: Path, *args) -> list:
    """Spawn ``world`` processes running ``fn(rank, world, *args)``; returns their results."""
    store = tmp_path / "gloo_store"
    mp.spawn(_entry, args=(world, str(store), fn, str(tmp_path), args), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
