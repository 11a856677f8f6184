"""``bnsuite`` (also ``python -m suite``): one small function per sub-command.

Each sub-command is a pair: ``add_<name>(subparsers)`` declares its arguments and sets
``handler=cmd_<name>``; ``cmd_<name>(args) -> int`` does the work and returns the exit code. Heavy
modules (torch, timm, MLflow) are imported inside the ``cmd_`` functions only, so ``bnsuite
--help`` answers at once. To add a sub-command, write the pair and list ``add_<name>`` in
:data:`SUBCOMMANDS`.

Exit codes: 0 success; 1 a cell failed; 2 a usage, configuration, data or tracking error, reported
before any training starts; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from suite import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEVICES = ("auto", "cpu", "cuda")


# -- shared arguments --------------------------------------------------------------------------
def _shard(text: str) -> Any:
    from suite.runner.shard import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that select an experiment's cells and where their runs are tracked."""
    p.add_argument("experiment", metavar="EXPERIMENT.yaml", help="experiment file (a matrix)")
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="dataset root for cells whose file gives none (also ${DATA} when unset)",
    )
    p.add_argument(
        "--shard",
        metavar="K/N",
        type=_shard,
        help="only shard K of N (1-based): cells i with i mod N = K-1, in plan order",
    )


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        metavar="DIR",
        default="runs",
        help="checkpoints, logs and locks: DIR/<experiment>/<cell_id>/ (default: ./runs)",
    )


def usage_error(exc: BaseException, command: str) -> int:
    """Print a pre-training error to stderr, one problem per line; return exit code 2."""
    lines = getattr(exc, "errors", None) or str(exc).splitlines() or [type(exc).__name__]
    print(f"bnsuite {command}: error:", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    return EXIT_USAGE


# -- run -----------------------------------------------------------------------------------------
def add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="train and evaluate the pending cells of an experiment (resumable)",
        description="Train each pending cell in its own process and record it in MLflow. "
        "Cells with a FINISHED run are skipped; an interrupted cell resumes from its checkpoint.",
    )
    _add_matrix_arguments(p)
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: auto")
    _add_workdir(p)
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from suite.config import ConfigError
    from suite.data import DataError
    from suite.runner import load_plan, prepare, render_failures, render_summary, run_plan
    from suite.runner.run import PreflightError
    from suite.tracking import TrackingError

    try:
        plan = load_plan(
            args.experiment,
            tracking_uri=args.tracking_uri,
            data_root=args.data_root,
            shard=args.shard,
        )
        tracker = prepare(plan, args.device, workdir=args.workdir)
    except (ConfigError, DataError, TrackingError, PreflightError) as exc:
        return usage_error(exc, "run")
    if tracker is None:
        print(f"nothing to do: all {len(plan.cells)} cells are done ({plan.tracking_uri})")
    report = run_plan(plan, tracker, workdir=args.workdir, device=args.device)
    print(render_summary(report))
    if report.failed:
        print(render_failures(report), file=sys.stderr)
    if report.busy:
        ids = ", ".join(o.planned.cell_id for o in report.busy)
        print(f"skipped, locked by another runner (still training): {ids}", file=sys.stderr)
    if report.interrupted:
        print(
            "interrupted: run the same command again to resume (finished cells are skipped, the "
            "stopped cell restarts from its checkpoint)",
            file=sys.stderr,
        )
    return report.exit_code


# -- plan ----------------------------------------------------------------------------------------
def add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="list the cells, their ids, the varying axes and done/pending (no training)",
    )
    _add_matrix_arguments(p)
    _add_workdir(p)
    p.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from suite.config import ConfigError
    from suite.runner import cell_folder, load_plan, render_plan
    from suite.runner.lock import is_locked
    from suite.tracking import TrackingError

    try:
        plan = load_plan(
            args.experiment,
            tracking_uri=args.tracking_uri,
            data_root=args.data_root,
            shard=args.shard,
            write=False,
        )
    except (ConfigError, TrackingError) as exc:
        return usage_error(exc, "plan")
    running = {
        c.cell_id
        for c in plan.cells
        if is_locked(cell_folder(args.workdir, plan.name, c.cell_id) / "lock")
    }
    print(render_plan(plan, running))
    return EXIT_OK


# -- bench ---------------------------------------------------------------------------------------
def add_bench(sub: Any) -> None:
    from suite.cell import METHODS, PRECISIONS, STRATEGIES

    p = sub.add_parser(
        "bench",
        help="time one training step on synthetic tensors (and optionally the data path)",
        description="Median step time and images/s of one cell's training step on tensors already "
        "on the device; --nproc runs real processes (DDP; gloo on CPU) to measure SyncBN's "
        "cross-process cost against MomentumBN.",
    )
    p.add_argument("--method", choices=METHODS, default="byol")
    p.add_argument("--backbone", default="resnet18", help="any timm model with BatchNorm")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="global batch per view")
    p.add_argument("--student-bn", choices=STRATEGIES, help="default: the method's recipe")
    p.add_argument(
        "--teacher-bn",
        choices=STRATEGIES,
        help="default: the method's recipe (byol sync, m2t momentum, mocov2 shuffle)",
    )
    p.add_argument("--devices", type=int, default=1, help="per-device BN groups (emulated)")
    p.add_argument("--nproc", type=int, default=1, help="processes (DDP; gloo on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--cifar-stem",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: automatic (on for ResNets at <= 64 px)",
    )
    p.add_argument(
        "--reference", action="store_true", help="also time a supervised step on the same 2B images"
    )
    p.add_argument(
        "--data",
        type=int,
        default=0,
        metavar="BATCHES",
        help="also time the data path alone over this many batches",
    )
    p.add_argument("--dataset", default="synthetic", help="dataset for --data")
    p.add_argument("--data-root", default=None, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from suite import bench

    return bench.main(args)


# -- entry point ---------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[Any], None]] = [add_run, add_plan, add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnsuite",
        description="Reproducibility suite for BatchNorm statistics in teacher-student "
        "self-supervised learning (BYOL, MoCo v2, Momentum2 Teacher).",
    )
    parser.add_argument("--version", action="version", version=f"bnsuite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the sub-command, return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (argparse exits with 2)
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    return args.handler(args)
