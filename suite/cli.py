"""``bnsuite`` (also ``python -m suite``): one small function per sub-command.

Each sub-command is a pair: ``add_<name>(subparsers)`` declares its arguments and sets
``handler=cmd_<name>``; ``cmd_<name>(args) -> int`` does the work and returns the exit code. Heavy
modules (torch, timm, MLflow) are imported inside the ``cmd_`` functions only, so ``bnsuite
--help`` answers at once. To add a sub-command, write the pair and list ``add_<name>`` in
:data:`SUBCOMMANDS`.

Exit codes: 0 success; 1 a cell failed or the tracking store stopped answering mid-run (``run``;
rerun to record), a check failed or a run is missing
(``check``), nothing to report (``report``); 2 a usage, configuration, data or tracking error,
reported before any training starts; 130 interrupted.
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
    from suite.runner.plan import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,1,2`` (or a mix, ``0-2,7``) -> distinct seeds >= 0, in order."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            lo, hi = int(first), int(last) if dash else int(first)
            if lo < 0 or hi < lo:
                raise ValueError
            seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a seed list; write e.g. 0-4 or 0,1,2 (integers >= 0)"
        ) from None
    return seeds


def _add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment file, where its runs are tracked, and the overrides that select cells."""
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
        "--seeds",
        metavar="LIST",
        type=parse_seeds,
        help="replace the file's seeds: every cell once per seed (0-4, or 0,1,2)",
    )


def _add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    """:func:`_add_experiment_arguments` and ``--shard`` (run, plan)."""
    _add_experiment_arguments(p)
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
    from suite.runner import (
        load_plan,
        prepare,
        render_failures,
        render_fault,
        render_summary,
        run_plan,
    )
    from suite.runner.run import PreflightError
    from suite.tracking import TrackingError

    try:
        plan = load_plan(
            args.experiment,
            tracking_uri=args.tracking_uri,
            data_root=args.data_root,
            shard=args.shard,
            seeds=args.seeds,
        )
        tracker = prepare(plan, args.device, workdir=args.workdir)
    except (ConfigError, DataError, TrackingError, PreflightError) as exc:
        return usage_error(exc, "run")
    if tracker is None:
        print(f"nothing to do: all {len(plan.cells)} cells are done ({plan.tracking_uri})")
    report = run_plan(plan, tracker, workdir=args.workdir, device=args.device)
    print(render_summary(report))
    failures = render_failures(report)
    if failures:
        print(failures, file=sys.stderr)
    if report.fault is not None:
        print(render_fault(report), file=sys.stderr)
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
    p.add_argument("--json", action="store_true", help="print one JSON object (cells, values)")
    p.set_defaults(handler=cmd_plan)


def _read_experiment(args: argparse.Namespace) -> Any:
    """The experiment of a command that only reads results (plan, check, report).

    Where ``${DATA}`` is unset and no ``--data-root`` is given, ``${DATA}`` reads as the
    placeholder ``$DATA``: where the data lies is not part of a cell id, so the cells and their
    ids are the same wherever the data is, or without it.
    """
    import os

    from suite.config import load_experiment

    env = None
    if args.data_root is None and "DATA" not in os.environ:
        env = {**os.environ, "DATA": "$DATA"}
    return load_experiment(args.experiment, data_root=args.data_root, env=env, seeds=args.seeds)


def _read_plan(args: argparse.Namespace, experiment: Any = None, shard: Any = None) -> Any:
    """The plan of ``experiment`` (read from ``args`` when None) against the tracking store."""
    from suite.runner.plan import build_plan
    from suite.tracking import check_tracking, resolve_tracking_uri

    experiment = experiment or _read_experiment(args)
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking(uri, write=False)
    return build_plan(experiment, uri, shard)


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from suite.config import ConfigError
    from suite.runner import cell_folder, render_plan
    from suite.runner.lock import is_locked
    from suite.runner.plan import plan_json
    from suite.tracking import TrackingError

    try:
        plan = _read_plan(args, shard=args.shard)
    except (ConfigError, TrackingError) as exc:
        return usage_error(exc, "plan")
    running = {
        c.cell_id
        for c in plan.cells
        if is_locked(cell_folder(args.workdir, plan.name, c.cell_id) / "lock")
    }
    if args.json:
        print(json.dumps(plan_json(plan, running), indent=1, default=str))
    else:
        print(render_plan(plan, running))
    return EXIT_OK


# -- check ---------------------------------------------------------------------------------------
def _metric(text: str) -> str:
    from suite.check.metrics import check_metric
    from suite.config.errors import Invalid

    try:
        return check_metric(text)
    except Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="judge the recorded runs of an experiment against its baselines (exit 0/1/2)",
        description="Read the latest FINISHED run of each cell and judge every entry and "
        "relation of the baselines with a statistical test: reproduced / pass / holds, FAIL / "
        "contradicted, inconclusive, missing, or reference (shown, not judged). Exit 0 when "
        "nothing FAILed or is missing, 1 on a FAIL, a contradiction or a missing run (unless "
        "--allow-missing; with --strict also on an inconclusive verdict), 2 on a usage, "
        "baseline or tracking error.",
    )
    _add_experiment_arguments(p)
    p.add_argument(
        "--baseline",
        metavar="FILE",
        action="append",
        help="baseline file (repeatable; default: every baselines/*.yaml with a section for "
        "the experiment)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="judge on the cells that have finished runs; missing ones do not fail the check",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="an inconclusive verdict also exits 1 (for a positive reproduction)",
    )
    w = p.add_argument_group("writing a baseline (an explicit step: thresholds from measured runs)")
    w.add_argument(
        "--write-baseline",
        metavar="FILE",
        help="write FILE's section for this experiment from the finished runs, then check it",
    )
    w.add_argument(
        "--metric",
        action="append",
        type=_metric,
        help="metric to write (repeatable; default: knn/top1_gain and knn/top1)",
    )
    w.add_argument(
        "--new-runs",
        type=int,
        default=1,
        metavar="M",
        help="seeds per cell the gate's check will judge (for the power the file states; "
        "default 1)",
    )
    w.add_argument(
        "--false-alarm",
        type=float,
        default=0.02,
        metavar="RATE",
        help="family-wise false-alarm rate of the written gate for one fresh correct run, split "
        "over its entries (default 0.02)",
    )
    p.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from suite.check import baselines_for, check_plan, default_baseline_files, render_check
    from suite.check.write import DEFAULT_METRICS, Rule, write_baseline
    from suite.config import ConfigError
    from suite.tracking import TrackingError

    if args.write_baseline and args.baseline:
        return usage_error(
            ValueError("--write-baseline FILE checks the file it writes; leave out --baseline"),
            "check",
        )
    if args.new_runs < 1:
        return usage_error(ValueError(f"--new-runs: {args.new_runs} is not >= 1"), "check")
    if not 0 < args.false_alarm <= 0.5:
        return usage_error(
            ValueError(f"--false-alarm: {args.false_alarm:g} is not a rate in (0, 0.5]"), "check"
        )
    try:
        experiment = _read_experiment(args)
        if args.baseline:
            files, explicit = [Path(f) for f in args.baseline], True
        elif not args.write_baseline:
            files, explicit = default_baseline_files(args.experiment), False
        if not args.write_baseline:  # a bad baseline is reported before the store is read
            baselines = baselines_for(experiment.name, files, explicit=explicit)
        plan = _read_plan(args, experiment)
        if args.write_baseline:
            command = "bnsuite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            warnings = write_baseline(
                args.write_baseline,
                plan,
                metrics=args.metric or DEFAULT_METRICS,
                rule=Rule(args.false_alarm, args.new_runs),
                command=command,
            )
            for warning in warnings:
                print(f"bnsuite check: warning: {warning}", file=sys.stderr)
            print(f"wrote {args.write_baseline}", file=sys.stderr)
            baselines = baselines_for(plan.name, [Path(args.write_baseline)], explicit=True)
        result = check_plan(plan, baselines, allow_missing=args.allow_missing, strict=args.strict)
    except (ConfigError, TrackingError, ValueError) as exc:
        return usage_error(exc, "check")
    return _print_result(result, args.json, render_check)


def _print_result(result: Any, as_json: bool, render: Any) -> int:
    """Print a check's or a comparison's result (its JSON, or its text) and return its exit
    code."""
    import json

    print(json.dumps(result.to_json(), indent=1) if as_json else render(result))
    return result.exit_code


# -- compare -------------------------------------------------------------------------------------
def add_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two sets of runs of an experiment, configuration by configuration (exit "
        "0/1/2)",
        description="Compare side B with side A: two tracking stores (--a, --b), or one store "
        "at two git commits (--a-commit, --b-commit: the run tag mlflow.source.git.commit, by "
        "prefix). For each configuration (cells that differ only in their seed) and metric: "
        "mean B - mean A with its 95 % CI and a two-sided t-test (paired by seed when both "
        "sides ran the same seeds, else Welch), the Mann-Whitney U p beside it on unpaired "
        "rows, and better / same / worse from the t-test p. Exit 1 when a row is significantly "
        "worse beyond --factor, else 0; 2 on a usage, experiment or tracking error.",
    )
    _add_experiment_arguments(p)
    for side in ("a", "b"):
        p.add_argument(
            f"--{side}",
            metavar="URI",
            help=f"side {side.upper()}'s tracking store (default: --tracking-uri, else "
            "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
        )
        p.add_argument(
            f"--{side}-commit",
            metavar="SHA",
            help=f"side {side.upper()} reads, per cell, the latest FINISHED run of this git "
            "commit (a prefix of the hash)",
        )
    p.add_argument(
        "--metric",
        action="append",
        type=_metric,
        help="metric to compare (repeatable; default: linear/top1, knn/top1, their _gain, "
        "train/loss_final and images_per_s, those that a run carries)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="significance level per row (default 0.05)"
    )
    p.add_argument(
        "--factor",
        type=float,
        default=1.0,
        metavar="F",
        help="exit 1 only for a significant worsening beyond F: mean B < mean A / F where "
        "higher is better, > mean A * F where lower is (default 1: any)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:

    from suite.check.compare import compare_plans, read_side, render_comparison
    from suite.config import ConfigError
    from suite.tracking import TrackingError, resolve_tracking_uri

    uri_a = resolve_tracking_uri(args.a or args.tracking_uri)
    uri_b = resolve_tracking_uri(args.b or args.tracking_uri)
    if (uri_a, args.a_commit) == (uri_b, args.b_commit):
        return usage_error(
            ValueError(
                f"both sides are the same runs ({uri_a}); give two stores (--a, --b) or two "
                "commits (--a-commit, --b-commit)"
            ),
            "compare",
        )
    try:
        experiment = _read_experiment(args)
        plan_a = read_side(experiment, uri_a, args.a_commit)
        plan_b = read_side(experiment, uri_b, args.b_commit)
        result = compare_plans(
            plan_a,
            plan_b,
            metrics=args.metric,
            alpha=args.alpha,
            factor=args.factor,
            commits=(args.a_commit, args.b_commit),
        )
    except (ConfigError, TrackingError, ValueError) as exc:
        return usage_error(exc, "compare")
    return _print_result(result, args.json, render_comparison)


# -- report --------------------------------------------------------------------------------------
def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md and a self-contained index.html (tables, plots) of an experiment",
        description="Paper vs measured for every baseline entry and relation, and plots "
        "(accuracy per BN pair, accuracy against batch size, images/s, loss curves), with the "
        "command, commit, versions and device that produced it. Exit 1 when no cell has a "
        "finished run.",
    )
    _add_experiment_arguments(p)
    p.add_argument(
        "--baseline",
        metavar="FILE",
        action="append",
        help="baseline file (repeatable; default: every baselines/*.yaml with a section for it)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/<experiment>)")
    p.add_argument(
        "--notes",
        metavar="FILE",
        help="Markdown text for the report's 'Reading' section (your interpretation)",
    )
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from suite.check import BaselineError, baselines_for, check_plan, default_baseline_files
    from suite.config import ConfigError
    from suite.report import write_report
    from suite.runner.plan import folder_name
    from suite.tracking import TrackingError

    try:
        plan = _read_plan(args)
        files = (
            [Path(f) for f in args.baseline]
            if args.baseline
            else default_baseline_files(args.experiment)
        )
        try:
            baselines = baselines_for(plan.name, files, explicit=bool(args.baseline))
        except BaselineError:
            if args.baseline:
                raise
            baselines = []  # a report without a baseline still shows the measurements
        result = check_plan(plan, baselines, allow_missing=True)
    except (ConfigError, TrackingError) as exc:
        return usage_error(exc, "report")
    if not any(c.done for c in plan.cells):
        print(
            f"bnsuite report: experiment {plan.name!r} has no finished run in "
            f"{plan.tracking_uri}; nothing to report (run it first: bnsuite run "
            f"{args.experiment})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    except (OSError, UnicodeDecodeError) as exc:
        return usage_error(ValueError(f"--notes: cannot read {args.notes!r} ({exc})"), "report")
    out = Path(args.out) if args.out else Path("reports") / folder_name(plan.name)
    command = "bnsuite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    written = write_report(plan, result, out, command=command, notes=notes.strip())
    for path in written:
        print(path)
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
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="per-device BN groups (default: --nproc, one per process; more are emulated)",
    )
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


# -- _cell (hidden) ------------------------------------------------------------------------------
def add_cell(sub: Any) -> None:
    """``bnsuite _cell``: the process of one cell, started by ``bnsuite run`` (not listed in the
    help; :mod:`suite.runner.child`)."""
    p = sub.add_parser(
        "_cell",
        description="Train one cell written by the runner and report on stdout "
        "(started by `bnsuite run`; not for direct use).",
    )
    p.add_argument("cell", metavar="CELL.json", help="cell file written by the runner")
    p.add_argument("--workdir", required=True, help="the cell's checkpoint folder")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--nproc", type=_positive, default=1, help="> 1: start the cell under torchrun")
    p.set_defaults(handler=cmd_cell)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def cmd_cell(args: argparse.Namespace) -> int:
    from pathlib import Path

    from suite.runner.child import run_cell

    return run_cell(Path(args.cell), Path(args.workdir), args.device, args.nproc)


# -- entry point ---------------------------------------------------------------------------------
#: every sub-command; ``add_cell`` declares no help text, so ``bnsuite --help`` does not list it
SUBCOMMANDS: list[Callable[[Any], None]] = [
    add_run,
    add_plan,
    add_check,
    add_compare,
    add_report,
    add_bench,
    add_cell,
]


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
