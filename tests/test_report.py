"""``bnsuite report`` on a tiny real run: Markdown and HTML with the verdicts, the measurements
beside their floors, and real PNG plots embedded in the HTML."""

from __future__ import annotations

import base64
import re

import pytest
import yaml
from cli_helpers import cli, write_experiment

TINY = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "cifar_stem": False,
    "method": {"name": "byol", "proj_hidden": 32, "proj_dim": 32, "pred_hidden": 32},
    "epochs": 1,
    "max_steps": 3,
    "devices": 2,
    "optimizer": {"name": "sgd", "lr_per_256": 0.05, "warmup_epochs": 0},
    "eval": {"knn": {"k": 5, "temperature": 0.1}, "linear": {"epochs": 2}},
    "log_every": 1,
    "include": [
        {"bn": ["local", "local"], "batch_size": 16},
        {"bn": ["local", "momentum"], "batch_size": 32},
    ],
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Two cells trained for real (BN pair and batch size vary), then ``bnsuite report``."""
    folder = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("BNSUITE_ARTIFACT_ROOT", str(folder / "artifacts"))
    path = write_experiment(folder, "tiny-report", TINY)
    code, ran, err = cli("run", str(path), "--device", "cpu", "--workdir", str(folder / "runs"))
    assert code == 0, err
    base = folder / "baseline.yaml"
    section = {
        "metric": "knn/top1",
        "unit": "percent",
        "entries": [
            {
                "name": "momentum teacher",
                "match": {"teacher_bn": "momentum", "batch_size": 32},
                "expected": 50.0,
                "tolerance": 100.0,
                "source": "made up for the test",
                "reference": 88.18,
            },
            {
                "name": "impossible",
                "match": {"teacher_bn": "local", "batch_size": 16},
                "min": 101.0,
            },
        ],
        "relations": ["local/momentum >= local/local - 100"],
    }
    base.write_text(yaml.safe_dump({"experiments": {"tiny-report": section}}))
    out = folder / "out"
    code, stdout, err = cli("report", str(path), "--baseline", str(base), "--out", str(out))
    mp.undo()
    return code, stdout, err, out, ran


def test_report_writes_markdown_html_and_the_plots(reported):
    code, stdout, err, out, _ = reported
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "accuracy.png",
        "batch.png",
        "index.html",
        "loss.png",
        "report.md",
        "throughput.png",
    ]
    assert stdout.split() == [
        str(out / n)
        for n in [
            "report.md",
            "index.html",
            "accuracy.png",
            "batch.png",
            "throughput.png",
            "loss.png",
        ]
    ]


def test_report_pngs_are_real_images_with_pixels(reported):
    import matplotlib.image as mpimg

    out = reported[3]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
        pixels = mpimg.imread(png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels.std() > 0.01  # not a blank canvas


def test_html_embeds_every_png_it_shows(reported):
    out = reported[3]
    page = (out / "index.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(
        p.read_bytes() for p in out.glob("*.png")
    )
    assert "<script" not in page and "http" not in page.split("<body>")[1]


def test_markdown_shows_verdicts_floors_and_provenance(reported):
    md = (reported[3] / "report.md").read_text()
    assert "| momentum teacher | knn/top1 (%) | 1/1 |" in md
    assert "| reference |" in md.split("## Paper vs measured")[1].splitlines()[2]
    assert re.search(
        r"\| momentum teacher \| knn/top1 \(%\) \| 1/1 \| [\d.]+ \| 88\.18 \| 50\.00 \|", md
    )
    assert re.search(r"\| impossible \| .* \| ≥ 101\.00 \| .* \| FAIL \|", md)
    assert "| local/momentum >= local/local - 100 |" in md
    assert "## Not reproduced" in md and "- impossible: outside ≥ 101.00." in md
    table = md.split("## Every configuration beside its random-init floor")[1]
    assert re.search(r"\| local/local \| 1/1 \| [\d.]+ \| [\d.]+ \|", table), table
    assert "kNN floor %" in table
    for what in ("report command", "runs: git commit", "runs: torch", "runs: device"):
        assert f"| {what} |" in md
    for png in ("accuracy.png", "batch.png", "throughput.png", "loss.png"):
        assert f"]({png})" in md


def test_run_summary_shows_each_accuracy_beside_its_floor(reported):
    summary = reported[4]
    table = summary.split("experiment 'tiny-report'")[1]
    cells = re.findall(r"(\d+\.\d\d) \(floor (\d+\.\d\d)\)", table)
    assert len(cells) == 2 * 2, summary  # kNN and linear, for each of the two cells


def test_report_without_finished_runs_says_so_and_draws_nothing(tmp_path, mlflow_tmp):
    path = write_experiment(tmp_path, "never-run", TINY)
    out = tmp_path / "out"
    code, stdout, err = cli("report", str(path), "--out", str(out))
    assert code == 1 and stdout == ""
    assert "has no finished run" in err and not out.exists()


def test_a_floor_of_several_fixed_inits_shows_their_spread_beside_it():
    """With eval.floor_inits = 3 the floor is one number for every seed (its seed spread is 0):
    the configuration table shows the inits' own spread beside it; a one-init floor does not."""
    from dataclasses import replace

    from suite.cell import CellConfig, EvalConfig
    from suite.report import config_table
    from suite.report.data import Config
    from suite.runner.plan import PlannedCell

    def table(inits: int, extra: dict[str, float]) -> str:
        cell = CellConfig(experiment="t", eval=EvalConfig(floor_inits=inits))
        cells = tuple(
            PlannedCell(
                position=i,
                cell=replace(cell, seed=i),
                axes={},
                done=True,
                metrics={"knn/top1": 0.9 + i / 100, "knn/top1_random_init": 0.8, **extra},
            )
            for i in range(2)
        )
        return str(config_table([Config("byol", {}, cells)]).rows[0])

    several = table(3, {"knn/top1_random_init_std": 0.013})
    assert "80.00 ± 0.00 (3 inits, spread 1.30)" in several
    assert "inits" not in table(1, {})
