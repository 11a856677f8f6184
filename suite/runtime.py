"""Where a cell runs: device, processes, seeds, precision, peak memory and checkpoint files."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from suite import disk

DEVICES = ("auto", "cpu", "cuda")
TEMP_SUFFIX = ".tmp"


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if preference not in DEVICES:
        raise ValueError(f"device: {preference!r} is not valid; choose from {', '.join(DEVICES)}")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(preference)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun job described by the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Dist(rank, world, local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 on CUDA for ``auto``, bf16 anywhere for ``bf16``; None (full precision) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast_context(device: torch.device, precision: str):
    """The autocast region of :func:`autocast_dtype` (a no-op at full precision)."""
    return autocast_to(device, autocast_dtype(device, precision))


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(device: torch.device, flag: bool | None) -> bool:
    return device.type == "cuda" if flag is None else flag


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "cpu"


class DiskFull(OSError):
    """A file could not be written for want of space; the message names the folder and its free
    space (``errno`` is ENOSPC)."""


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """True when ``exc``'s chain holds ENOSPC/EDQUOT, or torch's writer failed (``unexpected
    pos``, its word for a short write) in a folder with under 1 MiB free."""
    if disk.is_full_error(exc):
        return True
    short_write = any("unexpected pos" in str(e) for e in disk.exception_chain(exc))
    free = disk.free_bytes(folder)
    return short_write and free is not None and free < 2**20


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder (``<name>.<random>.tmp``), then rename
    over ``path``: ``path`` is always a whole file. A full disk raises :class:`DiskFull` naming the
    folder and its free space (torch's own error, ``unexpected pos``, hides the cause); the
    temporary file is removed and ``path`` keeps its previous content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, Exception) and _disk_full(exc, path.parent):
            raise DiskFull(
                errno.ENOSPC,
                f"no space left on device: {path.name} could not be written in {path.parent} "
                f"({disk.free_space(path.parent)} after removing the partial file); free space "
                "there or choose another --workdir, then run again (any previous checkpoint "
                "is kept)",
            ) from exc
        raise


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files that killed :func:`save_atomic` calls left in ``folder``
    (``checkpoint*.pt.*.tmp``); call it only while no process writes there (under the cell lock).
    The removed paths."""
    removed = []
    for file in Path(folder).glob(f"checkpoint*.pt.*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
            removed.append(file)
    return removed


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
