"""Where and with what a run was made: the environment tags recorded on every cell run."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=_PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo, else ``platform.processor()``/``machine()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name() -> str:
    """The CUDA device this process uses, else the CPU model.

    CUDA is asked only where this process already initialised it: naming a device would otherwise
    create a CUDA context (hundreds of MB on GPU 0) in a process that never trains, such as the
    runner, whose cells report their own device.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return cpu_model()


@functools.lru_cache(maxsize=1)
def _static_tags() -> dict[str, str]:
    import torch

    from suite import __version__

    # only a repository that tracks this package counts (not, say, a project that vendors it)
    tracked = _git("ls-files", "--", "__init__.py")
    commit = _git("rev-parse", "HEAD") if tracked else None
    dirty = _git("status", "--porcelain", "--", ".") if commit else None  # changes under suite/
    tags = {
        "suite.version": __version__,
        "suite.git_commit": commit or "unknown",
        "suite.git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "suite.python": platform.python_version(),
        "suite.torch": torch.__version__,
        "suite.timm": _dist_version("timm"),
        "suite.mlflow": _dist_version("mlflow"),
        "suite.cuda": torch.version.cuda or "none",
        "suite.host": socket.gethostname(),
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def environment_tags() -> dict[str, str]:
    """Version, git commit (and whether suite/ has uncommitted changes), library versions, CUDA
    version, device name and host, as run tags."""
    return {**_static_tags(), "suite.device": device_name()}
