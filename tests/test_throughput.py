"""The throughput study: bench cells, their timers and figures, the study's files, gpu_check.sh.

Timings themselves are never asserted (the machine is shared); what is asserted is which figures
exist, what is (not) counted, and that runs, check, report and the script work end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from suite import runtime, throughput
from suite.cell import BenchConfig, CellConfig, DatasetConfig
from suite.cli import main
from suite.train import StepTimer

ROOT = Path(__file__).resolve().parents[1]
TINY_BENCH = """
name: tput-test
dataset: {{name: synthetic, image_size: 16, num_workers: 0}}
backbone: resnet10t
cifar_stem: false
method: {{name: byol, proj_hidden: 64, proj_dim: 32, pred_hidden: 64}}
batch_size: 8
devices: 2
optimizer: {{warmup_epochs: 0}}
bench: {{steps: 1, warmup: 0}}
matrix:
  nproc: {nproc}
  bn: [[sync, sync], [local, momentum]]
"""


def _tiny_cell(**bench) -> CellConfig:
    from suite.cell import MethodConfig, OptimizerConfig

    return CellConfig(
        experiment="t",
        dataset=DatasetConfig(name="synthetic", image_size=16, num_workers=0),
        backbone="resnet10t",
        cifar_stem=False,
        method=MethodConfig(proj_hidden=64, proj_dim=32, pred_hidden=64),
        optimizer=OptimizerConfig(warmup_epochs=0),
        batch_size=8,
        devices=2,
        student_bn="sync",
        teacher_bn="sync",
        bench=BenchConfig(**bench),
    )


def test_training_cells_keep_their_ids_and_bench_cells_get_their_own():
    """The bench keys enter a bench cell's id only: a training cell's id ignores them."""
    cell = CellConfig(batch_size=32, devices=4, teacher_bn="momentum")
    assert cell.replace(bench=BenchConfig(warmup=9, supervised=True)).cell_id == cell.cell_id
    bench = cell.replace(bench=BenchConfig(steps=5))
    assert bench.is_bench and not cell.is_bench
    assert bench.cell_id != cell.cell_id
    assert bench.replace(bench=BenchConfig(steps=6)).cell_id != bench.cell_id
    assert bench.replace(bench=BenchConfig(steps=5, warmup=9)).cell_id != bench.cell_id
    assert CellConfig.from_dict(bench.to_dict()) == bench


def test_throughput_study_covers_every_pair_of_each_method_at_two_process_counts_and_sizes():
    """experiments/throughput.yaml: bench cells only; BYOL and MoCo v2 with all 8 (student,
    teacher) pairs, M2T at its recipe; 1 and 2 processes; two resolutions; its baseline loads."""
    from suite.check import baselines_for
    from suite.config import load_experiment

    path = ROOT / "experiments" / "throughput.yaml"
    cells = load_experiment(path, env={}).cells()
    assert all(c.is_bench and c.bench.reference and c.bench.supervised for c in cells)
    pairs = {m: {(c.student_bn, c.teacher_bn) for c in cells if c.method.name == m} for m in
             ("byol", "mocov2", "m2t")}  # fmt: skip
    every = {(s, t) for s in ("local", "sync") for t in ("local", "sync", "momentum", "shuffle")}
    assert pairs == {"byol": every, "mocov2": every, "m2t": {("local", "momentum")}}
    assert {c.nproc for c in cells} == {1, 2} and {c.devices for c in cells} == {2}
    assert {c.dataset.image_size for c in cells} == {32, 64}
    assert len(cells) == 68
    sections = baselines_for("throughput", [ROOT / "baselines" / "throughput.yaml"], explicit=True)
    assert sections


def test_train_step_timer_on_cuda_reads_events_only_when_flushed(monkeypatch):
    """train.py's CUDA path: two events per step, no synchronisation until flush/summary."""
    syncs = []

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = 0.0

        def record(self) -> None:
            self.t = time.perf_counter()

        def synchronize(self) -> None:
            syncs.append(self)

        def elapsed_time(self, other: FakeEvent) -> float:
            return 1e3 * (other.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append("device"))
    timer = StepTimer(cuda=True)
    for _ in range(4):
        timer.start()
        timer.stop(time.perf_counter())
    assert syncs == [] and timer.step_s == []  # nothing read during the steps
    timer.start()  # an epoch's trailing start without a step is replaced, not kept
    timer.start()
    out = timer.summary(samples_per_step=8, skip=0)
    assert len(syncs) == 1 and len(timer.step_s) == 4 and out["images_per_s"] > 0


def test_collective_timer_counts_only_calls_inside_a_step_and_restores_torch_distributed(
    monkeypatch,
):
    """Blocking collectives inside a timed step are timed; calls outside a step and async calls
    are not; torch.distributed gets its functions back afterwards."""

    def slow_all_reduce(tensor, *args, **kwargs):
        time.sleep(0.02)

    monkeypatch.setattr(dist, "all_reduce", slow_all_reduce)
    timer = throughput.StepTimer(torch.device("cpu"))
    with timer.patched():
        assert dist.all_reduce is not slow_all_reduce
        dist.all_reduce(torch.zeros(1))  # outside a step
        with timer.step("a"):
            dist.all_reduce(torch.zeros(1))
            dist.all_reduce(torch.zeros(1), async_op=True)
        with timer.step("a", record=False):  # a warm-up round
            dist.all_reduce(torch.zeros(1))
    assert dist.all_reduce is slow_all_reduce
    assert len(timer.rounds["a"]) == 1 and len(timer.rounds["a"][0].collectives) == 1
    (step_s, coll_s) = timer.read()["a"]
    assert coll_s[0] >= 0.02 and step_s[0] >= coll_s[0] + 0.02  # the async call: in the step only


def test_peak_flops_only_for_bf16_on_a_listed_card():
    """MFU needs a stated peak: listed cards in bf16; unlisted cards, fp32 and the CPU are n/a."""
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert throughput.peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3", None) is None
    assert throughput.peak_flops("Intel(R) Xeon(R) Processor", torch.bfloat16) is None
    assert throughput.peak_flops("NVIDIA GeForce GT 710", torch.bfloat16) is None


def test_count_flops_counts_matrix_products_forward_and_backward():
    """A linear layer 4 -> 3 on 5 rows: 2·5·4·3 forward, twice that backward (input, weight)."""
    layer = nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    assert throughput.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 5 * 4 * 3


def test_bench_cell_in_one_process_times_the_cell_local_local_and_supervised_interleaved():
    """run_bench_cell without torchrun: every figure of the study, no collectives, no CPU MFU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine is far slower with 2 threads
    try:
        m = throughput.run_bench_cell(_tiny_cell(steps=2, warmup=0, supervised=True), device="cpu")
    finally:
        torch.set_num_threads(threads)
    for key in (
        "step_ms",
        "images_per_s",
        "local_step_ms",
        "local_images_per_s",
        "images_per_s_vs_local",
        "supervised_step_ms",
        "images_per_s_vs_supervised",
        "gflops_per_image",
        "peak_memory_mb",
    ):
        assert m[key] > 0, key
    assert m["images_per_s"] == pytest.approx(8 / (m["step_ms"] / 1e3))
    assert m["collective_fraction"] == 0.0 and "mfu" not in m
    assert m["bench/rounds"] == 2 and m["bench/world"] == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_bench_cells_across_two_processes_are_recorded_checked_and_reported(
    tmp_path, mlflow_tmp, capsys, monkeypatch
):
    """bnsuite run on 2 gloo processes: SyncBN spends a measured share of its step in
    collectives, MomentumBN none; check gates both from a baseline, report draws images/s per
    configuration and per BN pair and process count, and the compact table lists both cells."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread per process on a 2-core machine
    exp = tmp_path / "tput.yaml"
    exp.write_text(TINY_BENCH.format(nproc="[2]"))
    base = tmp_path / "base.yaml"
    base.write_text(
        "experiments:\n  tput-test:\n    unit: value\n    entries:\n"
        # one cell each: the sd of one run is stated, so each bound is a one-sided test
        "      - {match: {teacher_bn: momentum}, metric: collective_fraction, max: 0.01,"
        " sd: 0.001}\n"
        "      - {match: {teacher_bn: sync}, metric: collective_fraction, min: 0.001, sd: 0.001}\n"
        "      - {match: {teacher_bn: momentum}, metric: images_per_s_vs_local, min: 0.01,"
        " sd: 0.05}\n"
    )
    work = ["--workdir", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(["run", str(exp), *work]) == 0
    capsys.readouterr()
    assert main(["check", str(exp), "--baseline", str(base), "--json"]) == 0
    verdicts = [e["verdict"] for e in json.loads(capsys.readouterr().out)["entries"]]
    assert verdicts == ["pass", "pass", "pass"]
    assert main(["report", str(exp), "--baseline", str(base), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "throughput.png").exists()
    assert (tmp_path / "r" / "throughput_strategy.png").exists()  # per BN pair and nproc
    capsys.readouterr()
    assert throughput.main([str(exp)]) == 0
    table = capsys.readouterr().out
    assert "| byol | resnet10t | 16 | 8 | 2 | 2 | sync/sync |" in table
    assert "local/momentum" in table


@pytest.mark.slow
@pytest.mark.timeout(900)  # 7 cell processes: ~1 min on an idle 2-core machine, ~5 loaded
def test_gpu_check_script_tiny_on_cpu_measures_the_table_and_an_end_to_end_cell(tmp_path):
    """scripts/gpu_check.sh --device cpu --tiny: every path of the GPU check (bench cells through
    the runner, the table, the end-to-end cell with probes), the table written to a file named
    after the device."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = tmp_path / "gc"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=850,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    slug = throughput.slug(runtime.device_name(torch.device("cpu")))
    (table,) = out.glob(f"gpu_check-{slug}-*.md")
    text = table.read_text()
    for pair in ("sync/sync", "local/local", "local/sync", "local/momentum", "local/shuffle"):
        assert f"| byol | resnet10t | 16 | 8 | 1 | 2 | {pair} |" in text
    assert "kNN top-1 %" in text and "done" in text and "exit status 0" in text


def test_bench_nproc_without_devices_means_one_device_per_process(capsys):
    """--nproc 2 alone is 2 devices: a batch of 3 is then refused for --devices 2 (checked
    before anything is built)."""
    assert main(["bench", "--nproc", "2", "--batch-size", "3", "--device", "cpu"]) == 2
    assert "--batch-size 3 is not divisible by --devices 2" in capsys.readouterr().err
