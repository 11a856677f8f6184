"""The CI gate (``bnsuite check experiments/ci.yaml --baseline baselines/ci.yaml`` after the CI
matrix) and what it can catch.

The planted regression lives in the cell's own process, not in the suite's code: a
``sitecustomize`` module on the child's ``PYTHONPATH`` wraps ``torch.optim.SGD.step`` so that
every step multiplies the parameters by 1e6 (an optimizer bug that explodes the weights while the
loss stays bounded). The cell must end FAILED and the gate must fail on its entries.

A second plant makes every ``SGD.step`` a no-op: the student never updates (what a loss cut from
the graph, or an optimizer given the wrong parameters, also produce). The cell finishes, so only
the baseline can catch it: its final loss stays at the untrained value and its linear probe does
not rise above the random-init floor; the gate must name those entries. Every CI cell's linear
gain threshold lies above zero (``baselines/ci.yaml``, 5 seeds), so the plant in one cell shows
what the gate does for each; it runs in the MoCo v2 cell, the fastest to train.
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
GATED_METRICS = ("linear/top1_gain", "knn/top1_gain", "linear/top1", "knn/top1", "train/loss_final")

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


FROZEN_STUDENT = textwrap.dedent(
    """
    # planted by tests/test_gate.py: the optimizer never changes a parameter
    import torch.optim

    def _no_step(self, closure=None):
        return None if closure is None else closure()

    torch.optim.SGD.step = _no_step
    """
)


def _run_cell_with(
    plant_source: str, tmp_path: Path, monkeypatch, index: int = 0
) -> tuple[int, str]:
    """Run cell ``index`` of the CI matrix with ``plant_source`` as the child's
    ``sitecustomize``."""
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(plant_source)
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
        f"{index + 1}/{len(_cells())}",
        "--workdir",
        str(tmp_path / "runs"),
    )
    monkeypatch.delenv("PYTHONPATH")
    return code, uri


def _cells():
    from suite.config import load_experiment

    return load_experiment(CI).cells()


def test_ci_baseline_judges_every_ci_cell_on_its_gain_and_accuracy():
    from suite.check import load_baselines

    section = load_baselines(BASELINE)["ci"]
    by_metric: dict[str, int] = {}
    for entry in section.entries:
        by_metric[entry.metric] = by_metric.get(entry.metric, 0) + 1
        lower_is_regression = entry.metric != "train/loss_final"
        assert entry.side == ("lower" if lower_is_regression else "upper")
        assert entry.measured["n"] >= 5
    n = len(_cells())
    assert by_metric == {m: n for m in GATED_METRICS}


def test_ci_baseline_gain_thresholds_follow_the_rule_and_every_cell_must_learn():
    """Each gain threshold is mean − max(0.01, 3 std) of the measured seeds (the --write-baseline
    rule, nothing edited by hand), and every cell's linear-gain threshold lies above zero: a cell
    of any method that stops learning beyond its random-init floor fails the gate."""
    from suite.check import load_baselines

    gains = [e for e in load_baselines(BASELINE)["ci"].entries if e.metric.endswith("_gain")]
    assert len(gains) == 2 * len(_cells())
    for entry in gains:
        rule = max(0.01, 3 * entry.measured["std"])
        assert entry.expected == pytest.approx(entry.measured["mean"], abs=1e-6)
        assert entry.tolerance == pytest.approx(rule, rel=1e-4), entry.label
    linear = {e.label: e for e in gains if e.metric == "linear/top1_gain"}
    assert len(linear) == len(_cells())
    for label, entry in linear.items():
        assert entry.expected - entry.tolerance > 0, label


def test_ci_baseline_was_written_by_the_explicit_step():
    text = BASELINE.read_text()
    assert "bnsuite check experiments/ci.yaml --seeds 0-4" in text and "--write-baseline" in text
    assert yaml.safe_load(text)["experiments"]["ci"]["entries"]


def test_gate_fails_when_no_finished_run_is_there(tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    code, out, _ = cli("check", str(CI), "--baseline", str(BASELINE), "--tracking-uri", uri)
    assert code == 1
    assert f"0 pass, 0 FAIL, {len(GATED_METRICS) * len(_cells())} missing" in out


@pytest.mark.slow
def test_gate_fails_when_a_ci_cell_diverges(tmp_path, monkeypatch):
    code, uri = _run_cell_with(EXPLODING_OPTIMIZER, tmp_path, monkeypatch)
    assert code == 1  # the cell failed
    (run,) = read_runs(uri, "ci", status=None)
    assert run["status"] == "FAILED"
    code, out, _ = cli(
        "check", str(CI), "--baseline", str(BASELINE), "--tracking-uri", uri, "--json"
    )
    data = json.loads(out)
    planted = [e for e in data["entries"] if run["cell_id"] in e["cells"]]
    assert code == 1 and len(planted) == len(GATED_METRICS)
    assert all(e["verdict"] == "missing" and e["n"] == 0 for e in planted)


@pytest.mark.slow
@pytest.mark.timeout(900)  # one full CI cell (about a minute on two idle cores)
def test_gate_fails_naming_the_loss_and_gain_entries_when_the_student_never_updates(
    tmp_path, monkeypatch
):
    moco = next(i for i, c in enumerate(_cells()) if c.method.name == "mocov2")
    code, uri = _run_cell_with(FROZEN_STUDENT, tmp_path, monkeypatch, index=moco)
    assert code == 0  # nothing diverged: the cell finishes, only the baseline can catch it
    (run,) = read_runs(uri, "ci", status=None)
    assert run["status"] == "FINISHED"
    code, out, _ = cli(
        "check",
        str(CI),
        "--baseline",
        str(BASELINE),
        "--tracking-uri",
        uri,
        "--json",
        "--allow-missing",  # the other cells were not run; only the planted one is judged
    )
    data = json.loads(out)
    planted = {e["metric"]: e for e in data["entries"] if run["cell_id"] in e["cells"]}
    assert code == 1
    assert planted["train/loss_final"]["verdict"] == "FAIL"
    assert planted["linear/top1_gain"]["verdict"] == "FAIL"
    others = [e for e in data["entries"] if run["cell_id"] not in e["cells"]]
    assert others and all(e["verdict"] == "missing" for e in others)
