"""Shared test set-up: offline, small thread counts, MLflow pointed into a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def mlflow_tmp(tmp_path, monkeypatch):
    """An embedded SQLite tracking store and artifact folder under tmp_path; returns the URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BNSUITE_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(size)`` → the folder of a real, new filesystem of that size (a tmpfs, e.g.
    ``"256k"``) under tmp_path, unmounted after the test. Mounting needs root: the test is
    skipped where it cannot be done."""
    mounted: list[Path] = []

    def mount(size: str = "256k") -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a small filesystem needs root (mount -t tmpfs)")
        point = tmp_path / f"small{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
