"""The report's accuracy plots (matplotlib, Agg): each function draws one figure, writes a PNG.

Accuracies are drawn in percent. Every point carries its seed spread (error bar = sample std over
seeds, dots = the seeds) and, where the run logged one, the random-init floor; an expected value
is a red marker where an equivalence entry (a judged number of the same setting) selects exactly
that configuration's cells. Numbers of another setting (references: the paper's STL10 table
beside a laptop-scale run) are never drawn on an accuracy axis; the difference plot compares
their *differences* from sync/sync instead. Throughput figures: :mod:`suite.report.speed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from suite.report.data import Config
    from suite.report.difference import Arm

PROBES = (("knn/top1", "kNN top-1"), ("linear/top1", "linear top-1"))
#: the difference plot's panels: the paper's metric first
DIFFERENCE_PROBES = (("linear/top1", "linear top-1"), ("knn/top1", "kNN top-1"))


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, top: float = 1.0) -> Path:
    """Lay out (the axes below ``top``, a fraction of the height: room for a figure legend),
    write ``path`` at the report's dpi and close the figure."""
    fig.tight_layout(rect=(0.0, 0.0, 1.0, top))
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def accuracy_per_config(
    configs: Sequence[Config], paper: dict[tuple[str, str], float], path: Path
) -> Path | None:
    """Points of kNN and linear top-1 per configuration, floors dashed, expected values marked.

    ``paper[(config label, metric)]``: an equivalence entry's expected value in percent
    (:func:`suite.report.data.paper_marks`).
    """
    probes = [(k, t) for k, t in PROBES if any(c.stat(k).n for c in configs)]
    if not probes:
        return None
    plt = pyplot()
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
                label="expected (equivalence entry)",
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
    return save(fig, path)


def accuracy_vs_batch(series: dict[str, list[tuple[int, Config]]], path: Path) -> Path | None:
    """Accuracy against batch size, one line per strategy: ``series[label] = [(batch, config)]``."""
    probes = [
        (k, t)
        for k, t in PROBES
        if any(c.stat(k).n for points in series.values() for _, c in points)
    ]
    if not probes:
        return None
    plt = pyplot()
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
    return save(fig, path)


def loss_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> Path | None:
    """Training loss against step: one colour per configuration, one line per seed."""
    if not any(points for runs in curves.values() for points in runs):
        return None
    plt = pyplot()
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
    return save(fig, path)


def difference(arms: Sequence[Arm], path: Path) -> Path | None:
    """Each arm's difference from its sync/sync configuration (percent points): measured with
    its 95 % CI (paired by seed, else Welch; :mod:`suite.report.difference`) and, where the
    baselines hold both numbers, the paper's ``paper(arm) − paper(sync/sync)`` as a marker.
    One panel per metric (linear, kNN)."""
    metrics = [k for k, _ in DIFFERENCE_PROBES if any(a.metric == k for a in arms)]
    if not metrics:
        return None
    plt = pyplot()
    count = max(sum(a.metric == k for a in arms) for k in metrics)
    width = min(8.0, max(4.5, 0.9 * count + 2))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.6), squeeze=False)
    titles = dict(DIFFERENCE_PROBES)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = [a for a in arms if a.metric == metric]
        xs = list(range(len(rows)))
        with_ci = [(x, a) for x, a in zip(xs, rows, strict=True) if a.measured.ci is not None]
        if with_ci:
            ax.errorbar(
                [x for x, _ in with_ci],
                [a.measured.value for _, a in with_ci],
                yerr=[
                    [a.measured.value - a.measured.ci[0] for _, a in with_ci],
                    [a.measured.ci[1] - a.measured.value for _, a in with_ci],
                ],
                fmt="o",
                color="#4c72b0",
                capsize=5,
                markersize=7,
                label="measured, 95 % CI (paired by seed, else Welch)",
            )
        bare = [(x, a) for x, a in zip(xs, rows, strict=True) if a.measured.ci is None]
        if bare:
            ax.plot(
                [x for x, _ in bare],
                [a.measured.value for _, a in bare],
                "o",
                mfc="none",
                color="#4c72b0",
                markersize=7,
                label="measured, one seed (no CI)",
            )
        papers = [(x, a.paper) for x, a in zip(xs, rows, strict=True) if a.paper is not None]
        if papers:
            ax.plot(
                [x + 0.15 for x, _ in papers],
                [v for _, v in papers],
                "D",
                color="#c44e52",
                markersize=7,
                label="paper: arm − sync/sync",
            )
        ax.axhline(0.0, color="0.3", linewidth=1)
        bases = {a.sync.label for a in rows}
        one_base = len(bases) == 1
        ticks = [f"{a.pair if one_base else a.config.label}\n({a.measured.pairing})" for a in rows]
        ax.set_xticks(xs, ticks, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel(f"{titles[metric]}: arm − sync/sync (points)")
        base = bases.pop() if one_base else "its sync/sync"
        ax.set_title(f"{titles[metric]}: arm − {base}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles: dict[str, object] = {}
    for ax in axes[0]:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=3, fontsize=8)
    return save(fig, path, top=0.92)
