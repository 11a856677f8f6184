"""``bnsuite`` command line: instant help, and exit code 2 with a precise message for every problem
found before training (configuration, data, shard, device, tracking) — with nothing recorded."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli
from cli_helpers import write_experiment as _write_experiment

from suite.cli import SUBCOMMANDS, build_parser, main
from suite.tracking import read_runs

CELL = {
    "dataset": {"name": "synthetic", "image_size": 16, "num_workers": 0},
    "backbone": "test_resnet",
    "cifar_stem": False,
    "method": {"name": "byol", "proj_hidden": 32, "proj_dim": 32, "pred_hidden": 32},
    "max_steps": 2,
    "batch_size": 32,
}


def write_experiment(folder: Path, name: str, **keys) -> Path:
    return _write_experiment(folder, name, CELL, **keys)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


# -- help ---------------------------------------------------------------------------------------
HEAVY = ("torch", "timm", "mlflow", "sklearn", "matplotlib")


def test_help_does_not_import_heavy_modules():
    """`bnsuite --help`, `run --help`, `plan --help` exit 0 with usage text and leave torch, timm,
    MLflow, scikit-learn and matplotlib unimported."""
    result = run_python(
        "import sys\n"
        "from suite.cli import main\n"
        "codes = [main(a) for a in (['--help'], ['run', '--help'], ['plan', '--help'])]\n"
        f"print('CODES', codes, 'HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    assert result.returncode == 0, result.stderr
    assert "CODES [0, 0, 0] HEAVY []" in result.stdout
    assert "usage: bnsuite" in result.stdout and "--shard K/N" in result.stdout


def test_python_dash_m_suite_and_console_script_answer_help():
    """`python -m suite --help` and the `bnsuite` console script list the sub-commands, exit 0."""
    by_module = subprocess.run(
        [sys.executable, "-m", "suite", "--help"], capture_output=True, text=True, timeout=60
    )
    assert by_module.returncode == 0 and "run" in by_module.stdout and "plan" in by_module.stdout
    script = Path(sys.executable).with_name("bnsuite")
    if not script.exists():
        pytest.skip("console script not installed next to this Python")
    by_script = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert by_script.returncode == 0 and by_script.stdout == by_module.stdout


def test_every_subcommand_is_registered_with_a_handler():
    """Each add_<name> in SUBCOMMANDS yields a sub-command whose parsed args carry a handler."""
    parser = build_parser()
    for name in ("run", "plan"):
        args = parser.parse_args([name, "x.yaml"])
        assert callable(args.handler) and args.handler.__name__ == f"cmd_{name}"
    assert len(SUBCOMMANDS) >= 2


def test_usage_errors_exit_2():
    """No sub-command, an unknown one, or a bad --device choice: argparse's exit code 2."""
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([]) == 2
        assert main(["frobnicate"]) == 2
        assert main(["run", "x.yaml", "--device", "tpu"]) == 2


# -- errors before training ----------------------------------------------------------------------
@pytest.mark.parametrize("shard", ["0/2", "3/2", "1/0", "half"])
def test_bad_shard_exits_2_naming_value_and_rule(shard, tmp_path):
    """--shard outside 1..N or malformed → exit 2, stderr names --shard and the value."""
    code, _, err = cli("run", str(tmp_path / "x.yaml"), "--shard", shard)
    assert code == 2
    assert "--shard" in err and repr(shard) in err


def test_config_error_exits_2_with_field_value_and_choices(tmp_path, mlflow_tmp):
    """A misspelt method and a bad batch size → exit 2, one line per problem naming the field
    path, the bad value and the valid choices; no run recorded, no work folder created."""
    path = write_experiment(tmp_path, "bad", method={"name": "byoll"}, batch_size=-4)
    code, out, err = cli("run", str(path), "--workdir", str(tmp_path / "runs"))
    assert code == 2 and out == ""
    lines = [line.strip() for line in err.splitlines()[1:]]
    method = next(line for line in lines if "method.name" in line)
    assert "'byoll'" in method and "byol" in method.split("'byoll'", 1)[1]
    assert any("batch_size" in line and "-4" in line for line in lines)
    assert len(lines) >= 2
    assert not (tmp_path / "runs").exists()
    assert read_runs(mlflow_tmp, "bad", status=None) == []


def test_plan_config_error_exits_2(tmp_path, mlflow_tmp):
    """plan validates the same way: a missing name → exit 2 naming the key."""
    path = tmp_path / "noname.yaml"
    path.write_text(yaml.safe_dump(CELL))
    code, _, err = cli("plan", str(path))
    assert code == 2 and "name: missing" in err


def test_missing_dataset_exits_2_with_layout_before_training(tmp_path, mlflow_tmp):
    """cifar10 under an empty --data-root → exit 2 naming the dataset and the expected layout;
    no cell folder (nothing trained) and no store: the data check comes before the store is
    created, so no empty mlflow.db is left behind."""
    empty = tmp_path / "data"
    empty.mkdir()
    path = write_experiment(
        tmp_path, "nodata", dataset={"name": "cifar10", "image_size": 16, "num_workers": 0}
    )
    code, _, err = cli(
        "run", str(path), "--data-root", str(empty), "--workdir", str(tmp_path / "runs")
    )
    assert code == 2
    assert "dataset 'cifar10'" in err and "cifar-10-batches-py" in err
    assert "Expected layout" in err
    assert not (tmp_path / "runs").exists()
    assert not Path(mlflow_tmp.removeprefix("sqlite:///")).exists()  # no empty store left


def test_unreachable_tracking_server_exits_2(tmp_path):
    """--tracking-uri pointing at a closed port → exit 2 naming the URI, before any training."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    path = write_experiment(tmp_path, "offline")
    code, _, err = cli("run", str(path), "--tracking-uri", uri, "--workdir", str(tmp_path / "r"))
    assert code == 2 and uri in err and "unreachable" in err
    assert not (tmp_path / "r").exists()


def test_cuda_without_gpu_exits_2(tmp_path, mlflow_tmp):
    """--device cuda where torch sees no GPU → exit 2 naming --device; nothing recorded."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_experiment(tmp_path, "nogpu")
    code, _, err = cli("run", str(path), "--device", "cuda", "--workdir", str(tmp_path / "r"))
    assert code == 2 and "--device" in err and "cuda" in err
    assert read_runs(mlflow_tmp, "nogpu", status=None) == []


def test_experiment_file_that_is_not_utf8_exits_2_naming_the_place(tmp_path, mlflow_tmp):
    """A Latin-1 byte in the file: plan and run exit 2 with the line, the column and the byte,
    not a UnicodeDecodeError traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\nbackbone: resnet18\n")
    for command in ("plan", "run"):
        code, out, err = cli(command, str(path), "--workdir", str(tmp_path / "runs"))
        assert code == 2 and out == ""
        assert "line 1, column 10: byte 0xe9 is not UTF-8" in err and "Traceback" not in err


# -- read-only commands -------------------------------------------------------------------------
def test_plan_in_an_empty_folder_creates_nothing(tmp_path, monkeypatch):
    """plan with the default store (./mlflow.db) in an empty folder, and with --tracking-uri
    naming a missing folder: exit 0, every cell pending, and the folders stay empty."""
    path = write_experiment(tmp_path, "fresh")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, _ = cli("plan", str(path))
    assert code == 0 and "1 cells, 0 done, 1 pending" in out
    assert f"tracking: sqlite:///{empty / 'mlflow.db'}" in out
    missing = tmp_path / "missing" / "deeper"
    code, out, _ = cli("plan", str(path), "--tracking-uri", f"sqlite:///{missing / 'x.db'}")
    assert code == 0 and "1 pending" in out
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()


def test_plan_reads_a_store_that_run_may_not_write(tmp_path, mlflow_tmp, monkeypatch):
    """A store holding a FINISHED run of the cell, in a folder that refuses new files (emulated:
    the write probe raises PermissionError, since root may write anywhere): run exits 2 'not
    writable', plan exits 0 and shows the cell done — plan never asks for write access."""
    import tempfile

    from suite.config import load_experiment
    from suite.tracking import Tracker

    path = write_experiment(tmp_path, "copied")
    (the_cell,) = load_experiment(path).cells()
    Tracker(mlflow_tmp, "copied").start_cell(the_cell).finish()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    code, _, err = cli("run", str(path), "--workdir", str(tmp_path / "runs"))
    assert code == 2 and "not writable" in err
    code, out, _ = cli("plan", str(path))
    assert code == 0 and "1 cells, 1 done, 0 pending" in out


def test_sqlite_uri_naming_a_folder_exits_2(tmp_path):
    """--tracking-uri sqlite:///<a folder>: plan and run exit 2 naming the folder."""
    path = write_experiment(tmp_path, "folder")
    uri = f"sqlite:///{tmp_path}"
    for command in ("plan", "run"):
        code, _, err = cli(command, str(path), "--tracking-uri", uri)
        assert code == 2 and "is a folder, not a SQLite database file" in err


def test_workdir_under_a_regular_file_exits_2_and_creates_nothing(tmp_path, mlflow_tmp):
    """--workdir below a regular file: exit 2 naming --workdir and the file, before the store or
    the MLflow experiment is created (no NotADirectoryError traceback from the cell lock)."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    path = write_experiment(tmp_path, "underfile")
    code, out, err = cli("run", str(path), "--workdir", str(blocker / "runs"))
    assert code == 2 and out == ""
    assert "--workdir" in err and f"{blocker} (an ancestor of" in err and "not a folder" in err
    assert "Traceback" not in err
    assert not Path(mlflow_tmp.removeprefix("sqlite:///")).exists()


def test_batch_larger_than_an_in_memory_dataset_exits_2_before_anything_is_recorded(
    tmp_path, mlflow_tmp
):
    """batch_size 4096 on the synthetic set (2048 SSL images; batches drop the remainder, so no
    step would train): exit 2 naming batch_size, the value, the dataset and the largest valid
    batch, with no store, no run and no cell folder."""
    path = write_experiment(tmp_path, "hugebatch", batch_size=4096)
    code, _, err = cli("run", str(path), "--workdir", str(tmp_path / "runs"))
    assert code == 2, err
    assert "batch_size: 4096" in err and "'synthetic'" in err and "batch_size <= 2048" in err
    assert not (tmp_path / "runs").exists()
    assert not Path(mlflow_tmp.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_report_default_folder_stays_under_reports(tmp_path, mlflow_tmp, monkeypatch, kind):
    """An experiment named with '..' or as an absolute path (inside tmp_path, so that the old
    behaviour could do no harm): report's default --out is ./reports/<the name as one folder
    name>, as for the work and artifact folders; nothing is written outside ./reports."""
    from suite.config import load_experiment
    from suite.runner.plan import folder_name
    from suite.tracking import Tracker

    outside = tmp_path / "escaped"
    name = "../../../escaped" if kind == "relative" else str(outside)
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump({"name": name, **CELL}))
    (the_cell,) = load_experiment(path).cells()
    Tracker(mlflow_tmp, name).start_cell(the_cell).finish()
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    code, out, err = cli("report", str(path))
    assert code == 0, err
    written = [Path(line) for line in out.splitlines()]
    assert written and all(p.resolve().is_relative_to(work / "reports") for p in written)
    assert [p.name for p in (work / "reports").iterdir()] == [folder_name(name)]
    assert not outside.exists()
