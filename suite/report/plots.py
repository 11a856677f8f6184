"""The report's plots (matplotlib, Agg): each function draws one figure and writes a PNG.

Accuracies are drawn in percent. Every bar carries its seed spread (error bar = sample std over
seeds, dots = the seeds) and, where the run logged one, the random-init floor; the paper's value
is a red marker where a baseline entry selects exactly that configuration's cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from suite.report.data import Config

PROBES = (("knn/top1", "kNN top-1"), ("linear/top1", "linear top-1"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def accuracy_per_config(
    configs: Sequence[Config], paper: dict[tuple[str, str], float], path: Path
) -> Path | None:
    """Bars of kNN and linear top-1 per configuration, floors dashed, paper values marked.

    ``paper[(config label, metric)]``: the paper's value in percent.
    """
    probes = [(k, t) for k, t in PROBES if any(c.stat(k).n for c in configs)]
    if not probes:
        return None
    plt = _pyplot()
    width = max(5.0, 1.1 * len(configs) + 2)
    fig, axes = plt.subplots(1, len(probes), figsize=(width * len(probes), 4.2), squeeze=False)
    for ax, (metric, title) in zip(axes[0], probes, strict=True):
        xs = range(len(configs))
        stats = [c.stat(metric, 100.0) for c in configs]
        # points, not bars: the axis is zoomed on the data, and a bar's length would mislead
        shown = [(x, s) for x, s in zip(xs, stats, strict=True) if s.n]
        ax.errorbar(
            [x for x, _ in shown],
            [s.mean for _, s in shown],
            yerr=[s.std for _, s in shown],
            fmt="o",
            color="#4c72b0",
            capsize=5,
            markersize=7,
            label="measured (mean ± std over seeds)",
        )
        for x, s in shown:
            ax.plot([x + 0.12] * s.n, s.values, ".", color="0.3", markersize=4)
        floors = [c.stat(metric + "_random_init", 100.0) for c in configs]
        if any(f.n for f in floors):
            ax.hlines(
                [f.mean for f in floors],
                [x - 0.4 for x in xs],
                [x + 0.4 for x in xs],
                colors="#dd8452",
                linestyles="dashed",
                label="random-init floor",
            )
        marks = [
            (x, paper[(c.label, metric)])
            for x, c in zip(xs, configs, strict=True)
            if (c.label, metric) in paper
        ]
        if marks:
            ax.plot(
                [x for x, _ in marks],
                [v for _, v in marks],
                "r*",
                markersize=12,
                label="paper / expected",
            )
        values = [v for s in stats for v in s.values] + [v for _, v in marks]
        values += [f.mean for f in floors if f.n]
        if values:
            lo, hi = min(values), max(values)
            pad = max(1.0, 0.15 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
        ax.set_xticks(list(xs), [c.label for c in configs], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(configs) - 0.4)
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def accuracy_vs_batch(series: dict[str, list[tuple[int, Config]]], path: Path) -> Path | None:
    """Accuracy against batch size, one line per strategy: ``series[label] = [(batch, config)]``."""
    probes = [
        (k, t)
        for k, t in PROBES
        if any(c.stat(k).n for points in series.values() for _, c in points)
    ]
    if not probes:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(probes), figsize=(6.0 * len(probes), 4.2), squeeze=False)
    for ax, (metric, title) in zip(axes[0], probes, strict=True):
        for label, points in series.items():
            points = sorted(points, key=lambda p: p[0])
            stats = [c.stat(metric, 100.0) for _, c in points]
            xs = [b for (b, _), s in zip(points, stats, strict=True) if s.n]
            ys = [s for s in stats if s.n]
            if xs:
                ax.errorbar(
                    xs,
                    [s.mean for s in ys],
                    yerr=[s.std for s in ys],
                    marker="o",
                    capsize=3,
                    label=label,
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{title} against batch size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def throughput(configs: Sequence[Config], path: Path) -> Path | None:
    """Images/s per configuration (mean ± std over seeds)."""
    stats = [c.stat("images_per_s") for c in configs]
    if not any(s.n for s in stats):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(configs) + 2), 4.0))
    xs = range(len(configs))
    ax.bar(
        xs,
        [s.mean if s.n else 0 for s in stats],
        yerr=[s.std for s in stats],
        capsize=4,
        color="#55a868",
    )
    ax.set_xticks(list(xs), [c.label for c in configs], rotation=30, ha="right")
    ax.set_ylabel("training images/s (median step)")
    ax.set_title("throughput per configuration")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def loss_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> Path | None:
    """Training loss against step: one colour per configuration, one line per seed."""
    if not any(points for runs in curves.values() for points in runs):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(curves.items()):
        for j, points in enumerate(runs):
            if points:
                ax.plot(
                    [s for s, _ in points],
                    [v for _, v in points],
                    color=colours[i % len(colours)],
                    alpha=0.8,
                    linewidth=1.2,
                    label=label if j == 0 else None,
                )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss curves (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_by_strategy(
    points: Sequence[tuple[str, int, int, float, float | None]], path: Path
) -> Path | None:
    """Bench cells: images/s (left, one panel per resolution) and images/s relative to the
    interleaved local/local step (right) per BN pair, one bar per process count; bars are means
    over the other axes (methods), error bars their std.

    ``points``: ``(student/teacher, nproc, image size, images/s, images_per_s_vs_local)``.
    """
    import statistics

    if not points:
        return None
    plt = _pyplot()
    pairs = list(dict.fromkeys(p[0] for p in points))
    procs = sorted({p[1] for p in points})
    sizes = sorted({p[2] for p in points})
    fig, axes = plt.subplots(
        1, len(sizes) + 1, figsize=(4.5 * (len(sizes) + 1) + 1, 4.4), squeeze=False
    )
    width = 0.8 / len(procs)

    def bars(ax, values_of) -> None:
        for j, n in enumerate(procs):
            means, stds = [], []
            for pair in pairs:
                vs = [v for v in values_of(pair, n) if v is not None]
                means.append(statistics.fmean(vs) if vs else 0.0)
                stds.append(statistics.stdev(vs) if len(vs) > 1 else 0.0)
            xs = [i + (j - (len(procs) - 1) / 2) * width for i in range(len(pairs))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{n} process(es)")
        ax.set_xticks(range(len(pairs)), pairs, rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)

    for ax, size in zip(axes[0][:-1], sizes, strict=True):
        bars(ax, lambda pair, n, s=size: [p[3] for p in points if p[:3] == (pair, n, s)])
        ax.set_title(f"images/s, {size} px (mean over methods)")
        ax.set_ylabel("training images/s")
    ax = axes[0][-1]
    bars(ax, lambda pair, n: [p[4] for p in points if p[:2] == (pair, n)])
    ax.axhline(1.0, color="0.3", linewidth=1)
    ax.set_title("× local/local, interleaved in the same run")
    ax.set_ylabel("images/s ÷ local/local images/s")
    return _save(fig, path)
