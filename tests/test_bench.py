"""`bnsuite bench`: its JSON contract and its refusals (timings themselves are not asserted)."""

import json
import subprocess
import sys

import pytest

from suite.cli import main

TINY = [
    "--backbone",
    "resnet10t",
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--device",
    "cpu",
    "--no-cifar-stem",
    "--json",
]


def test_bench_json_has_the_promised_fields(capsys):
    """One JSON object with step_ms (median) and images_per_s, plus the EMA share."""
    assert main(["bench", "--method", "m2t", "--devices", "2", "--reference", *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in [
        "step_ms",
        "images_per_s",
        "ema_ms",
        "ema_fraction",
        "supervised_step_ms",
        "step_over_supervised",
        "peak_memory_mb",
    ]:
        assert out[key] > 0, key
    assert out["teacher_bn"] == "momentum" and out["student_bn"] == "local"
    assert out["images_per_s"] == pytest.approx(8 / (out["step_ms"] / 1e3))


@pytest.mark.distributed
def test_bench_with_two_processes_runs_sync_bn_across_them():
    """--nproc 2 on CPU: real gloo processes with SyncBN in student and teacher."""
    cmd = [
        sys.executable,
        "-m",
        "suite",
        "bench",
        "--method",
        "byol",
        "--student-bn",
        "sync",
        "--teacher-bn",
        "sync",
        "--nproc",
        "2",
        "--devices",
        "2",
        *TINY,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["nproc"] == 2 and out["step_ms"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "10", "--devices", "4"], "not divisible by --devices 4"),
        (["--devices", "3", "--nproc", "2"], "not a multiple of --nproc 2"),
        (["--student-bn", "momentum"], "teacher-only strategy; choose from local, sync"),
    ],
)
def test_bench_refuses_bad_combinations_before_building(args, message, capsys):
    """Inconsistent batch/devices/nproc or a teacher-only student strategy: exit 2, the rule."""
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "nonexist"], "--backbone 'nonexist' is not a timm model; choose from"),
        (["--backbone", "resnet81"], "(did you mean 'resnet18'?)"),
        (["--backbone", "vit_tiny_patch16_224"], "has no BatchNorm layer"),
        (["--batch-size", "0"], "--batch-size 0: must be an integer >= 1"),
        (["--nproc", "0"], "--nproc 0: must be an integer >= 1"),
        (["--devices", "0"], "--devices 0: must be an integer >= 1"),
        (["--data", "-1"], "--data -1: must be an integer >= 0"),
        (["--data", "2", "--dataset", "nope"], "--dataset 'nope': unknown; choose from digits"),
        (["--data", "2", "--dataset", "stl10"], "--dataset stl10 (no --data-root)"),
    ],
)
def test_bench_bad_values_exit_2_naming_flag_value_and_choices(args, message, capsys):
    """Each bad value exits 2 with one line naming the flag, the value and what is valid (no
    traceback, nothing built or timed)."""
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_stl10_without_data_names_the_layout(tmp_path, capsys):
    """--data 2 --dataset stl10 under an empty --data-root: exit 2 with the expected layout."""
    assert main(["bench", "--data", "2", "--dataset", "stl10", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--dataset stl10 --data-root {tmp_path}" in err and "stl10_binary/" in err


def test_bench_cuda_without_a_gpu_exits_2(capsys):
    """--device cuda where torch sees no GPU: exit 2 naming --device and the choices."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_bench_data_path_alone(capsys):
    """--data N times the two-view data path of a dataset without the model."""
    assert main(["bench", "--data", "2", "--dataset", "digits", *TINY]) == 0
    assert json.loads(capsys.readouterr().out)["data_images_per_s"] > 0
