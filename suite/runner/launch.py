"""How a cell's process is started and tied to the runner.

``cell.nproc == 1``: ``python -m suite.runner.child CELL.json --workdir DIR --device D``.
``cell.nproc > 1``: ``python -m suite.runner.launch N CELL.json ...``, a trampoline that asks to die
with the runner and then becomes ``torchrun --standalone --nproc-per-node=N -m
suite.runner.child CELL.json ...`` (``exec``), so killing the runner also ends torchrun's agent,
and every rank (which asks the same of the agent).

The children get the runner's environment plus the resolved tracking URI
(``MLFLOW_TRACKING_URI``), the runner's pid (``BNSUITE_PARENT_PID``), unbuffered output and a
``PYTHONPATH`` that finds this very ``suite`` package.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

PARENT_ENV = "BNSUITE_PARENT_PID"
PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Linux: SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``, which
    survives ``exec``); exit now if ``expected_parent`` is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def child_command(nproc: int, cell_file: Path, workdir: Path, device: str) -> list[str]:
    """The argv that trains one cell (see the module docstring)."""
    args = [str(cell_file), "--workdir", str(workdir), "--device", device]
    if nproc <= 1:
        return [sys.executable, "-m", "suite.runner.child", *args]
    return [sys.executable, "-m", "suite.runner.launch", str(nproc), *args]


def torchrun_command(nproc: int, child_args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node=N -m suite.runner.child ARGS`` (same Python)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "suite.runner.child",
        *child_args,
    ]


def child_env(tracking_uri: str) -> dict[str, str]:
    """The runner's environment plus what a cell process needs (module docstring)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_root + (os.pathsep + path if path else "")
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env[PARENT_ENV] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    """``python -m suite.runner.launch NPROC CHILD_ARGS...``: die with the runner, exec torchrun."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        sys.stderr.write("usage: python -m suite.runner.launch NPROC CELL.json --workdir DIR ...\n")
        return 2
    parent = os.environ.get(PARENT_ENV)
    die_with_parent(int(parent) if parent else None)
    command = torchrun_command(int(argv[0]), argv[1:])
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
