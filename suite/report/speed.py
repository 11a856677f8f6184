"""The report's throughput figures: one panel per method, never a mean over methods.

BYOL, MoCo v2 and M2T do different work per image (a predictor, a queue, a second EMA), so an
images/s averaged over them is no one's speed: every number drawn here is of one method, and
a bar is the mean (± std) over the seeds of one configuration only. Figures keep a fixed width
(:data:`MAX_WIDTH_IN` inches at the report's dpi) whatever the number of cells: panels stack in
rows, and the per-configuration bars are horizontal, so more cells make a figure taller, never
wider.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from suite.report.data import label
from suite.report.plots import pyplot, save

if TYPE_CHECKING:
    from suite.check.results import Stat
    from suite.report.data import BenchPoint, Config

MAX_WIDTH_IN = 15.0  # 1650 px at 110 dpi


@dataclass(frozen=True)
class Bar:
    """One drawn bar: ``mean ± std`` of ``n`` values of one method, BN pair and series."""

    pair: str
    series: str
    mean: float
    std: float
    n: int


def method_panels(configs: Sequence[Config]) -> dict[str, list[tuple[str, Stat]]]:
    """``method -> [(label without the method, images/s over seeds)]`` of the configurations
    that logged images/s, in plan order."""
    out: dict[str, list[tuple[str, Stat]]] = {}
    for c in configs:
        s = c.stat("images_per_s")
        if s.n:
            short = label(c.values, c.cells, drop=("method.",))
            out.setdefault(c.method, []).append((short, s))
    return out


def throughput(configs: Sequence[Config], path: Path) -> Path | None:
    """Images/s per configuration (mean ± std over seeds): one panel of horizontal bars per
    method, stacked, each panel as tall as its bars need."""
    panels = method_panels(configs)
    if not panels:
        return None
    plt = pyplot()
    heights = [0.24 * len(rows) + 1.0 for rows in panels.values()]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9.0, sum(heights) + 0.4),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (method, rows) in zip(axes[:, 0], panels.items(), strict=True):
        ys = list(range(len(rows)))
        ax.barh(
            ys,
            [s.mean for _, s in rows],
            xerr=[s.std for _, s in rows],
            capsize=3,
            color="#55a868",
        )
        ax.set_yticks(ys, [text for text, _ in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # plan order, top down
        ax.set_title(f"{method}: training images/s (median step; mean ± std over seeds)")
        ax.grid(axis="x", alpha=0.3)
    axes[-1][0].set_xlabel("training images/s")
    return save(fig, path)


def strategy_bars(points: Sequence[BenchPoint]) -> dict[str, dict[str, list[Bar]]]:
    """``method -> panel -> bars`` of the bench cells: a panel ``images/s, S px`` per image
    size (one bar per BN pair and process count) and ``× local/local`` (one bar per pair,
    process count and size). A bar's values are the seeds of one (method, pair, nproc, size)."""
    out: dict[str, dict[str, list[Bar]]] = {}
    sizes = sorted({p.image_size for p in points})
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method]
        pairs = list(dict.fromkeys(p.pair for p in mine))
        procs = sorted({p.nproc for p in mine})
        panels: dict[str, list[Bar]] = {}
        for size in sizes:
            panels[f"images/s, {size} px"] = _bars(
                mine, pairs, procs, [size], lambda p: p.images_per_s, single_size=True
            )
        panels["× local/local, interleaved in the same run"] = _bars(
            mine, pairs, procs, sizes, lambda p: p.vs_local, single_size=False
        )
        out[method] = {k: v for k, v in panels.items() if v}
    return out


def _bars(
    mine: Sequence[BenchPoint],
    pairs: Sequence[str],
    procs: Sequence[int],
    sizes: Sequence[int],
    value: Callable[[BenchPoint], float | None],
    *,
    single_size: bool,
) -> list[Bar]:
    bars = []
    for n in procs:
        for size in sizes:
            series = f"{n} process(es)" + ("" if single_size else f", {size} px")
            for pair in pairs:
                vs = [
                    v
                    for p in mine
                    if (p.pair, p.nproc, p.image_size) == (pair, n, size)
                    and (v := value(p)) is not None
                ]
                if vs:
                    std = statistics.stdev(vs) if len(vs) > 1 else 0.0
                    bars.append(Bar(pair, series, statistics.fmean(vs), std, len(vs)))
    return bars


def throughput_by_strategy(points: Sequence[BenchPoint], path: Path) -> Path | None:
    """Bench cells, one row of panels per method: images/s per image size (bars: BN pair ×
    process count) and images/s relative to the interleaved local/local step."""
    rows = strategy_bars(points)
    if not rows:
        return None
    plt = pyplot()
    cols = max(len(panels) for panels in rows.values())
    fig, axes = plt.subplots(
        len(rows),
        cols,
        figsize=(min(MAX_WIDTH_IN, 4.6 * cols + 0.6), 3.8 * len(rows) + 0.5),
        squeeze=False,
    )
    every = [b.series for panels in rows.values() for bars in panels.values() for b in bars]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(every))}
    handles: dict[str, object] = {}
    for ax_row, (method, panels) in zip(axes, rows.items(), strict=True):
        for ax, (title, bars) in zip(ax_row, panels.items(), strict=False):
            pairs = list(dict.fromkeys(b.pair for b in bars))
            series = list(dict.fromkeys(b.series for b in bars))
            width = 0.8 / len(series)
            for j, name in enumerate(series):
                mine = {b.pair: b for b in bars if b.series == name}
                xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(pairs))]
                shown = [(x, mine[p]) for x, p in zip(xs, pairs, strict=True) if p in mine]
                handles[name] = ax.bar(
                    [x for x, _ in shown],
                    [b.mean for _, b in shown],
                    width,
                    yerr=[b.std if b.n > 1 else 0.0 for _, b in shown],
                    capsize=3 if any(b.n > 1 for _, b in shown) else 0,
                    color=colour[name],
                )
            if title.startswith("×"):
                ax.axhline(1.0, color="0.3", linewidth=1)
                ax.set_ylabel("images/s ÷ local/local images/s")
            else:
                ax.set_ylabel("training images/s")
            pad = max(0.0, (4 - len(pairs)) / 2)  # a method with few pairs keeps narrow bars
            ax.set_xlim(-0.5 - pad, len(pairs) - 0.5 + pad)
            ax.set_xticks(range(len(pairs)), pairs, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{method}: {title}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        for ax in ax_row[len(panels) :]:
            ax.set_visible(False)
    fig.legend(
        handles.values(), handles.keys(), loc="upper center", ncol=min(6, len(handles)), fontsize=8
    )
    return save(fig, path, top=1.0 - 0.45 / (3.8 * len(rows) + 0.5))
