"""The CI gate can fail: a planted regression in a real CI cell fails ``bnsuite check`` against
``baselines/ci.yaml``, naming the entries; a missing finished run fails it too.

The regression is planted in the cell's own process, not in the suite's code: a
``sitecustomize`` module on the child's ``PYTHONPATH`` replaces ``torch.optim.SGD.step`` with a
no-op, so the student never updates (what a broken optimizer wiring or a detached loss does).
The cell trains exactly as CI trains it (the first cell of ``experiments/ci.yaml``: BYOL,
local/local), then is evaluated against its random-init floor.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "experiments" / "ci.yaml"
BASELINE = ROOT / "baselines" / "ci.yaml"

FROZEN_STUDENT = textwrap.dedent(
    """
    # planted by tests/test_gate.py: the optimizer never moves the parameters
    import torch.optim

    def _frozen_step(self, closure=None):
        return None

    torch.optim.SGD.step = _frozen_step
    """
)


def _cells() -> int:
    from suite.config import load_experiment

    return len(load_experiment(CI).cells())


@pytest.fixture(scope="module")
def regressed(tmp_path_factory):
    """The first CI cell trained with the planted regression; its store."""
    folder = tmp_path_factory.mktemp("gate")
    plant = folder / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(FROZEN_STUDENT)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(plant))
    mp.setenv("BNSUITE_ARTIFACT_ROOT", str(folder / "artifacts"))
    code, _, err = cli(
        "run",
        str(CI),
        "--tracking-uri",
        uri,
        "--device",
        "cpu",
        "--shard",
        f"1/{_cells()}",
        "--workdir",
        str(folder / "runs"),
    )
    mp.undo()
    assert code == 0, err
    return uri


def test_ci_baseline_has_a_learning_entry_for_every_ci_cell():
    from suite.check import load_baselines
    from suite.config import load_experiment

    section = load_baselines(BASELINE)["ci"]
    gains = [e for e in section.entries if e.metric == "knn/top1_gain"]
    cells = load_experiment(CI).cells()
    assert len(gains) == len(cells)
    assert all(e.side == "lower" and e.expected - e.tolerance > 0 for e in gains), (
        "every CI cell must be required to beat its random-init floor"
    )


@pytest.mark.slow
def test_gate_fails_when_the_student_never_updates(regressed):
    code, out, _ = cli(
        "check",
        str(CI),
        "--baseline",
        str(BASELINE),
        "--tracking-uri",
        regressed,
        "--allow-missing",
        "--json",
    )
    data = json.loads(out)
    failed = [e for e in data["entries"] if e["verdict"] == "FAIL"]
    assert code == 1
    assert {e["metric"] for e in failed} >= {"knn/top1_gain"}
    first = data["entries"][0]["cells"]
    assert all(set(e["cells"]) == set(first) for e in failed)  # only the planted cell's entries
    gain = next(e for e in failed if e["metric"] == "knn/top1_gain")
    assert gain["mean"] < gain["min"]
    code, text, _ = cli(
        "check",
        str(CI),
        "--baseline",
        str(BASELINE),
        "--tracking-uri",
        regressed,
        "--allow-missing",
    )
    assert code == 1 and "failed: E" in text and "knn/top1_gain" in text.split("failed: ")[1]


@pytest.mark.slow
def test_gate_fails_when_a_finished_run_is_missing(regressed):
    code, out, _ = cli(
        "check", str(CI), "--baseline", str(BASELINE), "--tracking-uri", regressed, "--json"
    )
    data = json.loads(out)
    assert code == 1
    missing = [e for e in data["entries"] if e["verdict"] == "missing"]
    assert missing and all(e["n"] == 0 for e in missing)
    assert data["counts"]["missing"] >= _cells() - 1


def test_ci_baseline_was_written_by_the_explicit_step():
    text = BASELINE.read_text()
    assert "bnsuite check experiments/ci.yaml" in text and "--write-baseline" in text
    assert yaml.safe_load(text)["experiments"]["ci"]["entries"]
