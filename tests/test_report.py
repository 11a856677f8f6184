"""``bnsuite report``: on a tiny real run, Markdown and HTML with the verdicts, the measurements
beside their floors, and real PNG plots embedded in the HTML; on fabricated plans (finished cells
with made-up metrics, no store), the difference from sync/sync and its interval, the labels, the
throughput figures' size and panels, the title and the lines of "Not reproduced"."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli, write_experiment
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]

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
                "sd": 0.1,
                "sd_source": "stated for the test (one seed)",
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
    failed = md.split("## Not reproduced")[1].split("## ")[0]
    assert re.search(
        r"- E2 impossible \(knn/top1, percent\): measured [\d.]+ over 1 seed\(s\), must be "
        r"≥ 101\.00; difference from 101\.00: -[\d.]+ \[-[\d.]+, -[\d.]+\] \(90 % CI\), "
        r"p that it lies beyond [\d.<]+\.",
        failed,
    ), failed
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


# -- fabricated plans: finished cells with made-up metrics, judged without a store -----------
ARMS = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "batch_size": 32,
    "devices": 4,
    "optimizer": {"warmup_epochs": 0},
    "matrix": {"bn": [["sync", "sync"], ["local", "local"], ["local", "momentum"]]},
    "include": [{"bn": ["local", "local"], "devices": 8}, {"method": "m2t"}],
    "seeds": [0, 1, 2],
}
# linear/top1 per configuration and seed; kNN is 2 points lower plus a seed-dependent wobble
LINEAR = {
    ("byol", "sync", "sync", 4): [0.880, 0.884, 0.878],
    ("byol", "local", "local", 4): [0.840, 0.846, 0.835],
    ("byol", "local", "momentum", 4): [0.881, 0.886, 0.879],
    ("byol", "local", "local", 8): [0.850, 0.860, 0.855],
    ("m2t", "local", "momentum", 4): [0.885, 0.887, 0.889],
}


def fabricated(folder: Path, name: str, spec: dict, metrics_of):
    """The plan of experiment ``spec`` with every cell finished and ``metrics_of(cell)`` its
    metrics (no tracking store is read)."""
    from suite.config import load_experiment
    from suite.runner.plan import Plan, PlannedCell, Shard, varying_fields

    exp = load_experiment(write_experiment(folder, name, spec), env={})
    cells = exp.cells()
    fields = varying_fields(cells)
    planned = tuple(
        PlannedCell(
            position=i,
            cell=c,
            axes={k: c.flat()[k] for k in fields},
            done=True,
            metrics=metrics_of(c),
            tags={"suite.device": "fabricated"},
        )
        for i, c in enumerate(cells)
    )
    return Plan(
        exp, f"sqlite:///{folder / 'unused.db'}", Shard(), tuple(fields), len(cells), planned
    )


def arm_metrics(cell) -> dict[str, float]:
    top1 = LINEAR[(cell.method.name, cell.student_bn, cell.teacher_bn, cell.devices)][cell.seed]
    return {
        "linear/top1": top1,
        "knn/top1": top1 - 0.02 + 0.003 * cell.seed * (cell.teacher_bn == "momentum"),
        "knn/top1_random_init": 0.30,
        "images_per_s": 100.0 + cell.seed,
    }


def judged_report(folder: Path, sections: dict | None):
    """``write_report`` of the fabricated ARMS plan against ``sections`` (a baseline file's
    experiment section; None: no baseline): ``(plan, result, report.md text, out folder)``."""
    from suite.check import check_plan, load_baselines
    from suite.report import write_report

    plan = fabricated(folder, "arms", ARMS, arm_metrics)
    baselines = []
    if sections is not None:
        path = folder / "baseline.yaml"
        path.write_text(yaml.safe_dump({"experiments": {"arms": sections}}, sort_keys=False))
        baselines = [load_baselines(path)["arms"]]
    result = check_plan(plan, baselines, allow_missing=True)
    out = folder / "out"
    write_report(plan, result, out, command="bnsuite report (test)")
    return plan, result, (out / "report.md").read_text(encoding="utf-8"), out


BYOL4 = {"method": "byol", "devices": 4}
PAPER = {
    "unit": "percent",
    "metric": "linear/top1",
    "entries": [
        # the paper's numbers of another setting: references, differences drawn, never judged
        {"name": "sync/sync (paper)", "match": {**BYOL4, "bn": ["sync", "sync"]},
         "expected": None, "reference": 88.06},
        {"name": "local/local (paper)", "match": {**BYOL4, "bn": ["local", "local"]},
         "expected": None, "reference": 84.16},
        # judged numbers of this setting (kNN): one reproduced or not decided, one FAIL
        {"name": "sync/sync knn", "match": {**BYOL4, "bn": ["sync", "sync"]},
         "metric": "knn/top1", "expected": 86.0, "tolerance": 1.5},
        {"name": "local/local knn", "match": {**BYOL4, "bn": ["local", "local"]},
         "metric": "knn/top1", "expected": 86.0, "tolerance": 0.5},
    ],
    "relations": [
        {"relation": "sync/sync < local/local", "match": BYOL4},  # contradicted
        {"relation": "local/local < local/momentum", "match": BYOL4},  # holds
    ],
}  # fmt: skip


def test_paired_difference_and_its_95_ci_equal_scipys_ttest_rel():
    from suite.report.difference import difference

    arm, sync = {0: 84.0, 1: 84.6, 2: 83.5, 3: 84.9}, {0: 88.0, 1: 88.4, 2: 87.8, 3: 88.9}
    d = difference(arm, sync)
    ref = sps.ttest_rel(list(arm.values()), list(sync.values()))
    lo, hi = ref.confidence_interval(0.95)
    assert d.pairing == "paired by seed (4 pairs)" and d.n == 4
    assert d.value == pytest.approx(sum(arm[s] - sync[s] for s in arm) / 4)
    assert d.ci == pytest.approx((lo, hi), rel=1e-12)


def test_difference_without_shared_seeds_is_welchs_mean_and_95_ci():
    from suite.report.difference import difference

    arm, sync = {0: 84.0, 1: 84.6, 2: 83.5}, {3: 88.0, 4: 88.4, 5: 87.8, 6: 88.9}
    d = difference(arm, sync)
    ref = sps.ttest_ind(list(arm.values()), list(sync.values()), equal_var=False)
    assert d.pairing.startswith("Welch") and d.n == 7
    assert d.ci == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-12)
    assert difference({0: 84.0}, {0: 88.0}).ci is None  # one seed: a point, no interval


def test_arms_are_the_bn_pairs_that_share_every_other_value_with_sync_sync(tmp_path):
    """local/local and local/momentum at 4 devices are arms of byol sync/sync; local/local at 8
    devices (another per-device batch) and M2T (another method) are not. The paper's difference
    is paper(arm) − paper(sync/sync) where both references exist (linear only)."""
    from suite.report.data import configurations
    from suite.report.difference import arms

    plan, result, _, _ = judged_report(tmp_path, PAPER)
    drawn = arms(configurations(plan), ["linear/top1", "knn/top1"], result)
    by = {(a.metric, a.config.label): a for a in drawn}
    assert sorted(by) == [
        ("knn/top1", "byol local/local 8 per device"),
        ("knn/top1", "byol local/momentum 8 per device"),
        ("linear/top1", "byol local/local 8 per device"),
        ("linear/top1", "byol local/momentum 8 per device"),
    ]
    ll = by[("linear/top1", "byol local/local 8 per device")]
    values = [LINEAR[("byol", "local", "local", 4)], LINEAR[("byol", "sync", "sync", 4)]]
    ref = sps.ttest_rel([100 * v for v in values[0]], [100 * v for v in values[1]])
    assert ll.measured.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert ll.paper == pytest.approx(84.16 - 88.06)
    assert by[("knn/top1", "byol local/local 8 per device")].paper == pytest.approx(0.0)
    assert by[("linear/top1", "byol local/momentum 8 per device")].paper is None


def test_report_draws_the_difference_plot_and_marks_no_number_of_another_setting(tmp_path):
    from suite.report.data import configurations, paper_marks

    plan, result, md, out = judged_report(tmp_path, PAPER)
    png = out / "difference.png"
    assert png.read_bytes()[:8] == PNG and "](difference.png)" in md
    page = (out / "index.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert png.read_bytes() in [base64.b64decode(e) for e in embedded]
    # the accuracy plot marks the kNN equivalence entries only, not the STL10-like references
    marks = paper_marks(result, configurations(plan))
    assert marks == {
        ("byol sync/sync 8 per device", "knn/top1"): 86.0,
        ("byol local/local 8 per device", "knn/top1"): 86.0,
    }


def test_labels_show_the_per_device_batch_not_the_device_count(tmp_path):
    from suite.report.data import configurations

    plan, _, md, _ = judged_report(tmp_path, PAPER)
    labels = [c.label for c in configurations(plan)]
    assert labels == [
        "byol sync/sync 8 per device",
        "byol local/local 8 per device",
        "byol local/momentum 8 per device",
        "byol local/local 4 per device",
        "m2t local/momentum 8 per device",
    ]
    table = md.split("## Every configuration beside its random-init floor")[1]
    assert "| byol local/local 4 per device | 3/3 |" in table
    assert "devices=" not in md


def test_title_says_what_the_numbers_were_measured_against(tmp_path):
    regression = {
        "unit": "percent",
        "metric": "linear/top1",
        "entries": [
            {
                "name": "sync/sync: linear/top1",
                "kind": "regression",
                "match": {**BYOL4, "bn": ["sync", "sync"]},
                "expected": 88.07,
                "side": "lower",
                "measured": {"n": 3, "mean": 88.07, "std": 0.31},
            }
        ],
    }
    learns = {
        "unit": "percent",
        "metric": "linear/top1",
        "entries": [{"match": {**BYOL4, "bn": ["sync", "sync"]}, "min": 50, "sd": 1.0}],
    }
    for folder, section, heading in (
        ("regression", regression, "# arms: regression check against measured baselines"),
        ("bound", learns, "# arms: measured against its baselines"),
        ("paper", PAPER, "# arms: measured against the paper"),
        ("none", None, "# arms: measurements"),
    ):
        (tmp_path / folder).mkdir()
        md = judged_report(tmp_path / folder, section)[2]
        assert md.splitlines()[0] == heading
        if section is regression:
            assert "## Baseline vs measured" in md and "paper" not in md.lower()


def test_not_reproduced_states_each_fail_and_contradiction_with_its_ci_and_p(tmp_path):
    from suite.check.render import p_text

    _, result, md, _ = judged_report(tmp_path, PAPER)
    verdicts = {r.entry.label: r.verdict for r in result.entries}
    verdicts |= {r.spec.relation.text: r.verdict for r in result.relations}
    assert verdicts["local/local knn"] == "FAIL"
    assert verdicts["sync/sync < local/local"] == "contradicted"
    assert verdicts["local/local < local/momentum"] == "holds"
    failed = md.split("## Not reproduced")[1].split("\n## ")[0]
    lines = [line for line in failed.splitlines() if line.startswith("- ")]
    assert len(lines) == 2, failed
    fail = next(r for r in result.entries if r.verdict == "FAIL")
    lo, hi = fail.test.ci
    assert lines[0] == (
        f"- E4 local/local knn (knn/top1, percent): measured "
        f"{fail.selection.stat.mean:.2f} ± {fail.selection.stat.std:.2f} over 3 seed(s), "
        f"expected 86.00 ± 0.50; difference {fail.test.estimate.value:+.2f} "
        f"[{lo:+.2f}, {hi:+.2f}] (90 % CI), p that it lies outside ±0.50 "
        f"{p_text(fail.test.p_other)}."
    )
    rel = result.relations[0]
    assert lines[1].startswith(
        f"- R1 sync/sync < local/local (linear/top1): left − right {rel.test.estimate.value:+.2f}"
    )
    assert "paired by seed (3 pairs)" in lines[1]
    assert f"Holm-adjusted p of the opposite {p_text(rel.p_other_adjusted)}" in lines[1]
    # the CI level is said once under each table; what is not decided is listed with its reason
    assert md.count("90 % confidence interval") == 2
    for r in result.entries:
        if r.verdict == "inconclusive":
            assert f"E{result.entries.index(r) + 1} {r.entry.label}: " in md
            assert r.reason and r.reason in md


# -- throughput figures ----------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.fixture(scope="module")
def bench_plan(tmp_path_factory):
    """experiments/throughput.yaml's 68 bench cells, finished, images/s = a made-up function of
    method, BN pair, processes and size (each cell a distinct number)."""
    from suite.config import load_experiment
    from suite.runner.plan import Plan, PlannedCell, Shard, varying_fields

    exp = load_experiment(ROOT / "experiments" / "throughput.yaml", env={})
    cells = exp.cells()
    fields = varying_fields(cells)

    def rate(i: int, c) -> dict[str, float]:
        return {"images_per_s": 1000.0 / c.dataset.image_size + i, "images_per_s_vs_local": 0.5}

    planned = tuple(
        PlannedCell(i, c, {k: c.flat()[k] for k in fields}, True, metrics=rate(i, c))
        for i, c in enumerate(cells)
    )
    folder = tmp_path_factory.mktemp("bench")
    return Plan(exp, "sqlite:///unused", Shard(), tuple(fields), len(cells), planned), folder


def test_throughput_figures_of_68_cells_keep_a_readable_width(bench_plan):
    from suite.report import speed
    from suite.report.data import bench_points, configurations

    plan, folder = bench_plan
    assert len(plan.cells) == 68
    per_config = speed.throughput(configurations(plan), folder / "throughput.png")
    per_strategy = speed.throughput_by_strategy(bench_points(plan), folder / "strategy.png")
    for png in (per_config, per_strategy):
        width, height = png_size(png)
        assert 400 < width <= 110 * speed.MAX_WIDTH_IN, (png.name, width)
        assert height < 4000, (png.name, height)


def test_throughput_panels_are_one_per_method_and_no_bar_mixes_methods(bench_plan):
    """Every bar of the per-strategy figure is one cell's value (one seed of one method, pair,
    process count and size): nothing is averaged over methods."""
    from suite.report import speed
    from suite.report.data import bench_points, configurations

    plan, _ = bench_plan
    panels = speed.method_panels(configurations(plan))
    assert list(panels) == ["byol", "mocov2", "m2t"]
    assert [len(rows) for rows in panels.values()] == [32, 32, 4]
    assert not any(label.startswith(("byol", "mocov2", "m2t")) for r in panels.values()
                   for label, _ in r)  # fmt: skip
    points = bench_points(plan)
    cell_of = {(p.method, p.pair, p.nproc, p.image_size): p.images_per_s for p in points}
    bars = speed.strategy_bars(points)
    assert list(bars) == ["byol", "mocov2", "m2t"]
    for method, by_panel in bars.items():
        for title, drawn in by_panel.items():
            if title.startswith("images/s"):
                size = int(title.split(", ")[1].split()[0])
                for b in drawn:
                    nproc = int(b.series.split()[0])
                    assert b.n == 1 and b.mean == cell_of[(method, b.pair, nproc, size)]
