"""baselines/: the paper's numbers are well-formed data tied to experiment files that exist."""

from pathlib import Path

import yaml

from suite.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_paper_baselines_name_existing_experiments_and_valid_numbers():
    data = yaml.safe_load((ROOT / "baselines" / "paper.yaml").read_text())
    for table in ("stl10_table1", "imagenet_r50_batch128"):
        section = data[table]
        exp = load_experiment(
            ROOT / "experiments" / f"{section['experiment']}.yaml", env={"DATA": "/data"}
        )
        pairs = {(c.student_bn, c.teacher_bn) for c in exp.cells()}
        for row in section["rows"]:
            assert row["expected"] is None or 0 < row["expected"] < 100
            if "student_bn" in row and row["expected"] is not None:
                assert (row["student_bn"], row["teacher_bn"]) in pairs, row
    assert [r["expected"] for r in data["stl10_table1"]["rows"]] == [
        88.06,
        84.16,
        87.12,
        87.80,
        88.18,
    ]
