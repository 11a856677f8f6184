"""Shared test set-up: offline, small thread counts, MLflow pointed into a temporary folder."""

from __future__ import annotations

import os

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
