"""The CI gate (``bnsuite check experiments/ci.yaml --baseline baselines/ci.yaml`` after the CI
matrix) and what it can catch.

The planted regression lives in the cell's own process, not in the suite's code: a
``sitecustomize`` module on the child's ``PYTHONPATH`` wraps ``torch.optim.SGD.step`` so that
every step multiplies the parameters by 1e6 (an optimizer bug that explodes the weights while the
loss stays bounded). The cell must end FAILED and the gate must fail on its entries.

What the gate cannot catch yet is written in ``baselines/ci.yaml``: at the CI budget the encoders
do not learn beyond a random-init floor with calibrated BN statistics, so a student that never
updates passes the accuracy floors too.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli

from suite.tracking import read_runs

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "experiments" / "ci.yaml"
BASELINE = ROOT / "baselines" / "ci.yaml"

EXPLODING_OPTIMIZER = textwrap.dedent(
    """
    # planted by tests/test_gate.py: every optimizer step blows the parameters up
    import torch
    import torch.optim

    _step = torch.optim.SGD.step

    def _exploding_step(self, closure=None):
        out = _step(self, closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(1e6)
        return out

    torch.optim.SGD.step = _exploding_step
    """
)


def _cells():
    from suite.config import load_experiment

    return load_experiment(CI).cells()


def test_ci_baseline_judges_every_ci_cell_on_its_gain_and_accuracy():
    from suite.check import load_baselines

    section = load_baselines(BASELINE)["ci"]
    by_metric: dict[str, int] = {}
    for entry in section.entries:
        by_metric[entry.metric] = by_metric.get(entry.metric, 0) + 1
        assert entry.side == "lower" and entry.measured["n"] >= 5
    n = len(_cells())
    assert by_metric == {"knn/top1_gain": n, "knn/top1": n, "linear/top1": n}


def test_ci_baseline_was_written_by_the_explicit_step():
    text = BASELINE.read_text()
    assert "bnsuite check experiments/ci.yaml --seeds 0-4" in text and "--write-baseline" in text
    assert yaml.safe_load(text)["experiments"]["ci"]["entries"]


def test_gate_fails_when_no_finished_run_is_there(tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    code, out, _ = cli("check", str(CI), "--baseline", str(BASELINE), "--tracking-uri", uri)
    assert code == 1
    assert f"0 pass, 0 FAIL, {3 * len(_cells())} missing" in out


@pytest.mark.slow
def test_gate_fails_when_a_ci_cell_diverges(tmp_path, monkeypatch):
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(EXPLODING_OPTIMIZER)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PYTHONPATH", str(plant))
    code, _, _ = cli(
        "run",
        str(CI),
        "--tracking-uri",
        uri,
        "--device",
        "cpu",
        "--shard",
        f"1/{len(_cells())}",
        "--workdir",
        str(tmp_path / "runs"),
    )
    monkeypatch.delenv("PYTHONPATH")
    assert code == 1  # the cell failed
    (run,) = read_runs(uri, "ci", status=None)
    assert run["status"] == "FAILED"
    code, out, _ = cli(
        "check", str(CI), "--baseline", str(BASELINE), "--tracking-uri", uri, "--json"
    )
    data = json.loads(out)
    planted = [e for e in data["entries"] if run["cell_id"] in e["cells"]]
    assert code == 1 and len(planted) == 3
    assert all(e["verdict"] == "missing" and e["n"] == 0 for e in planted)
