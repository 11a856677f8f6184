"""``bnsuite report``: an experiment's results beside the paper's, as Markdown and HTML.

>>> from suite.report import write_report
>>> write_report(plan, check_result, Path("reports/ci"), command="bnsuite report …")
[PosixPath('reports/ci/report.md'), PosixPath('reports/ci/index.html'), …png]

``report.md`` links the PNGs beside it; ``index.html`` embeds them (base64), so it can be mailed
or attached to a CI run on its own. Both hold the same sections: what produced the report
(command, date, and the commit, versions and device recorded with the runs), the verdicts of
``bnsuite check`` (paper vs measured: mean ± std over seeds, n, delta, verdict; relations and
whether their margin exceeds the seed spread), the measurements of every configuration beside
its random-init floor, and the plots.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from suite.check import metrics as m
from suite.check.judge import CheckResult
from suite.check.render import bound_text, entry_row, mean_std, number
from suite.report import plots
from suite.report.data import Config, configurations, provenance

if TYPE_CHECKING:
    from suite.runner.plan import Plan

__all__ = ["write_report"]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

        return "\n".join(
            [line(self.headers), "|" + "---|" * len(self.headers), *(line(r) for r in self.rows)]
        )

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def verdict_table(result: CheckResult) -> Table:
    """Paper vs measured; a ``reference`` column when an entry carries one."""
    references = any(r.entry.reference is not None for r in result.entries)
    headers = ["entry", "metric", "n", "measured", "paper / expected", "must be", "delta"]
    headers += ["verdict", "source"]
    if references:
        headers.insert(4, "reference")
    rows = []
    for r in result.entries:
        e = r.entry
        row = [*entry_row(0, r)[1:], e.source or "-"]  # the check's row without its index
        if references:
            row.insert(4, number(e.reference, e.unit))
        rows.append(row)
    return Table(headers, rows)


def relation_table(result: CheckResult) -> Table:
    rows = []
    for r in result.relations:
        s = r.spec
        sides = "-" if r.lhs is None else f"{number(r.lhs, s.unit)} vs {number(r.rhs, s.unit)}"
        spread = {True: "no: inside the seed spread", False: "yes", None: "-"}[r.within_spread]
        rows.append([s.relation.text, s.metric, sides, spread, r.verdict, s.note or "-"])
    return Table(
        ["relation", "metric", "left vs right", "margin beyond seed spread", "verdict", "note"],
        rows,
    )


def config_table(configs: Sequence[Config]) -> Table:
    def acc(c: Config, metric: str) -> str:
        s = c.stat(metric, 100.0)
        return mean_std(s.n, s.mean, s.std, "percent")

    def floor(c: Config, metric: str) -> str:
        """The floor over seeds; a floor of several fixed inits (eval.floor_inits) is the same for
        every seed, so the spread of its inits is shown beside it."""
        text = acc(c, metric)
        spread = c.stat(metric + "_std", 100.0)
        inits = {p.cell.eval.floor_inits for p in c.cells}
        if spread.n and len(inits) == 1:
            text += f" ({inits.pop()} inits, spread {spread.mean:.2f})"
        return text

    rows = []
    for c in configs:
        speed = c.stat("images_per_s")
        rows.append(
            [
                c.label,
                f"{sum(p.done for p in c.cells)}/{len(c.cells)}",
                acc(c, "knn/top1"),
                floor(c, "knn/top1_random_init"),
                acc(c, "knn/top1_gain"),
                acc(c, "linear/top1"),
                floor(c, "linear/top1_random_init"),
                acc(c, "linear/top1_gain"),
                mean_std(speed.n, speed.mean, speed.std, "value"),
            ]
        )
    return Table(
        [
            "configuration",
            "finished",
            "kNN top-1 %",
            "kNN floor %",
            "kNN gain (points)",
            "linear top-1 %",
            "linear floor %",
            "linear gain (points)",
            "images/s",
        ],
        rows,
    )


def paper_marks(result: CheckResult, configs: Sequence[Config]) -> dict[tuple[str, str], float]:
    """``(config label, metric) -> value (percent)`` for entries selecting exactly a config: the
    entry's ``reference`` where it has one (a paper's number for another setting), else its
    two-sided ``expected`` (a claimed number such as the paper's; one-sided regression thresholds
    are not marked)."""
    by_cells = {c.cell_ids: c for c in configs}
    marks = {}
    for r in result.entries:
        e = r.entry
        # a one-sided expected value is a regression threshold's centre, not a claimed number
        claimed = e.expected if e.side == "both" else None
        value = e.reference if e.reference is not None else claimed
        config = by_cells.get(frozenset(r.selection.cells))
        if config is None or value is None or not m.is_accuracy(e.metric):
            continue
        marks[(config.label, e.metric)] = value * (100.0 / m.UNITS[e.unit])
    return marks


def batch_series(plan: Plan) -> dict[str, list[tuple[int, Config]]]:
    """Configurations without ``batch_size``, each a line of (batch size, config) points."""
    if "batch_size" not in plan.fields:
        return {}
    series: dict[str, list[tuple[int, Config]]] = {}
    for config in configurations(plan, without=("seed", "batch_size")):
        series[config.label] = _by_batch(config)
    return series


def _by_batch(config: Config) -> list[tuple[int, Config]]:
    groups: dict[int, list] = {}
    for pc in config.cells:
        groups.setdefault(pc.cell.batch_size, []).append(pc)
    return [
        (b, Config(f"{config.label} b={b}", {**config.values, "batch_size": b}, tuple(cells)))
        for b, cells in groups.items()
    ]


def loss_histories(
    plan: Plan, configs: Sequence[Config]
) -> dict[str, list[list[tuple[int, float]]]]:
    from suite.tracking import metric_history

    out = {}
    for c in configs:
        out[c.label] = [
            metric_history(plan.tracking_uri, pc.run_id, "train/loss")
            for pc in c.cells
            if pc.done and pc.run_id
        ]
    return out


def bench_points(plan: Plan) -> list[tuple[str, int, int, float, float | None]]:
    """``(student/teacher, nproc, image size, images/s, images_per_s_vs_local)`` of every
    finished bench cell (:mod:`suite.throughput`), in plan order."""
    out = []
    for pc in plan.cells:
        if pc.done and pc.cell.is_bench and "images_per_s" in pc.metrics:
            c = pc.cell
            out.append(
                (
                    f"{c.student_bn}/{c.teacher_bn}",
                    c.nproc,
                    c.dataset.image_size,
                    float(pc.metrics["images_per_s"]),
                    pc.metrics.get("images_per_s_vs_local"),
                )
            )
    return out


def write_report(
    plan: Plan,
    result: CheckResult,
    out: str | Path,
    *,
    command: str = "",
    notes: str = "",
) -> list[Path]:
    """Write ``report.md``, ``index.html`` and the PNGs into ``out``; return their paths."""
    from suite import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = configurations(plan)
    figures: list[tuple[str, Path]] = []
    for title, path in (
        (
            "Accuracy per configuration (paper values marked)",
            plots.accuracy_per_config(configs, paper_marks(result, configs), out / "accuracy.png"),
        ),
        (
            "Accuracy against batch size",
            plots.accuracy_vs_batch(batch_series(plan), out / "batch.png"),
        ),
        ("Throughput", plots.throughput(configs, out / "throughput.png")),
        (
            "Throughput per BN strategy and process count (bench cells)",
            plots.throughput_by_strategy(bench_points(plan), out / "throughput_strategy.png"),
        ),
        ("Loss curves", plots.loss_curves(loss_histories(plan, configs), out / "loss.png")),
    ):
        if path is not None:
            figures.append((title, path))

    now = _dt.datetime.now(_dt.timezone.utc)
    produced = [
        ("report command", command or "-"),
        ("report written", f"{now:%Y-%m-%d %H:%M} UTC by bnsuite {__version__}"),
        ("experiment", f"{plan.name} ({plan.experiment.path})"),
        ("tracking", plan.tracking_uri),
        ("baselines", ", ".join(result.baselines) or "none"),
        ("cells finished", f"{result.cells_done} of {result.cells_total}"),
        *[(f"runs: {what}", value) for what, value in provenance(plan)],
    ]
    counts = result.counts()
    summary = f"{counts['pass']} pass, {counts['FAIL']} FAIL, {counts['missing']} missing" + (
        f", {counts['info']} claims without a number" if counts["info"] else ""
    )
    sections: list[tuple[str, Table | str]] = [
        ("What produced this report", Table(["", ""], produced)),
    ]
    if result.entries:
        sections.append((f"Paper vs measured ({summary})", verdict_table(result)))
    if result.relations:
        sections.append(("Relations", relation_table(result)))
    sections.append(("Every configuration beside its random-init floor", config_table(configs)))
    if notes:
        sections.append(("Reading", notes))
    if any(r.verdict == "FAIL" for r in result.entries):
        lines = []
        for r in result.entries:
            if r.verdict == "FAIL" and r.delta is not None:
                lines.append(
                    f"- {r.entry.label}: measured {number(r.selection.stat.mean, r.entry.unit)}, "
                    f"expected {number(r.entry.expected, r.entry.unit)}: off by "
                    f"{number(abs(r.delta), r.entry.unit)} ({r.entry.unit})."
                )
            elif r.verdict == "FAIL":
                lines.append(f"- {r.entry.label}: outside {bound_text(r)}.")
        sections.append(("Not reproduced", "\n".join(lines)))

    md = [f"# {plan.name}: measured against the paper", "", plan.experiment.description, ""]
    body = [
        f"<h1>{html.escape(plan.name)}: measured against the paper</h1>",
        f"<p>{html.escape(plan.experiment.description)}</p>",
    ]
    for title, content in sections:
        md += [f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(content, Table):
            md += [content.markdown(), ""]
            body.append(content.html())
        else:
            md += [content, ""]
            body.append("".join(f"<p>{html.escape(p)}</p>" for p in content.split("\n\n")))
    if figures:
        md += ["## Plots", ""]
        body.append("<h2>Plots</h2>")
        for title, path in figures:
            md += [f"![{title}]({path.name})", ""]
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;font-size:90%}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(plan.name)}"
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "index.html").write_text(page, encoding="utf-8")
    return [out / "report.md", out / "index.html", *(p for _, p in figures)]
