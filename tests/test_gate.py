"""The CI gate (``bnsuite check experiments/ci.yaml --baseline baselines/ci.yaml`` after the CI
matrix) and what it can catch.

The planted regression lives in the cell's own process, not in the suite's code: a
``sitecustomize`` module on the child's ``PYTHONPATH`` wraps ``torch.optim.SGD.step`` so that
every step multiplies the parameters by 1e6 (an optimizer bug that explodes the weights while the
loss stays bounded). The cell must end FAILED and the gate must fail on its entries.

A second plant makes every ``SGD.step`` a no-op: the student never updates (what a loss cut from
the graph, or an optimizer given the wrong parameters, also produce). The cell finishes, so only
the baseline can catch it: its final loss stays at the untrained value and its linear probe does
not rise above the random-init floor; the gate must name those entries. Every CI configuration's
linear-gain threshold lies above zero (``baselines/ci.yaml``: prediction bounds from 10 seeds), so
the plant in one cell shows what the gate does for each; it runs in a MoCo v2 cell, the fastest
to train (one of the gate's two seeds, so its threshold is the one-run bound).
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
GATED_METRICS = ("linear/top1_gain", "train/loss_final")

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


def _configurations() -> int:
    return len({c.method.name for c in _cells()})


def test_ci_baseline_judges_every_ci_configuration_on_its_gain_and_loss():
    """Two regression entries per CI configuration — what training added over the floor, and
    the final loss — from at least 10 measured seeds each: few, meaningful entries, so the
    family's false-alarm budget leaves each one power."""
    from suite.check import load_baselines

    section = load_baselines(BASELINE)["ci"]
    by_metric: dict[str, int] = {}
    for entry in section.entries:
        assert entry.kind == "regression", entry.label
        by_metric[entry.metric] = by_metric.get(entry.metric, 0) + 1
        lower_is_regression = entry.metric != "train/loss_final"
        assert entry.side == ("lower" if lower_is_regression else "upper")
        assert entry.measured["n"] >= 10 and entry.measured["df"] == entry.measured["n"] - 1
    assert by_metric == {m: _configurations() for m in GATED_METRICS}
    assert section.false_alarm == 0.02


def test_ci_gate_states_its_false_alarm_rate_and_every_cell_must_learn():
    """The file states the gate's family-wise false-alarm rate (0.02, split over its entries)
    and, per entry, the threshold and the shift caught with 90 % power for the two seeds per
    cell that .ci/run trains; every linear-gain threshold lies above zero (a cell of any method
    that stops learning beyond its floor fails), and the 90 %-power shift is smaller than the
    measured gain (a cell that loses all of it is caught)."""
    from suite.check import load_baselines
    from suite.check import stats as st

    section = load_baselines(BASELINE)["ci"]
    text = BASELINE.read_text()
    assert "fails the gate with probability <= 0.02" in text and "for 2 new run(s)" in text
    each = section.false_alarm / len(section.entries)
    seeds = len({c.seed for c in _cells()})
    assert seeds == 2
    for entry in section.entries:
        if entry.metric != "linear/top1_gain":
            continue
        meas = entry.measured
        bound = st.prediction_bound(meas["mean"], meas["std"], meas["n"], seeds, each, "lower")
        shift = st.detectable_shift(meas["std"], meas["n"], seeds, each)
        assert bound > 0 and shift < meas["mean"], entry.label
        assert f"{entry.label}: " in text and f"{bound:.4g}" in text


def test_ci_baseline_was_written_by_the_explicit_step():
    text = BASELINE.read_text()
    assert "bnsuite check experiments/ci.yaml --seeds 0-9" in text and "--write-baseline" in text
    assert "--new-runs 2" in text
    assert yaml.safe_load(text)["experiments"]["ci"]["entries"]


def test_gate_fails_when_no_finished_run_is_there(tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    code, out, _ = cli("check", str(CI), "--baseline", str(BASELINE), "--tracking-uri", uri)
    assert code == 1
    assert f"0 FAIL, {len(GATED_METRICS) * _configurations()} missing" in out


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
