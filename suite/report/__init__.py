"""``bnsuite report``: an experiment's results beside its baselines, as Markdown and HTML.

>>> from suite.report import write_report
>>> write_report(plan, check_result, Path("reports/ci"), command="bnsuite report …")
[PosixPath('reports/ci/report.md'), PosixPath('reports/ci/index.html'), …png]

``report.md`` links the PNGs beside it; ``index.html`` embeds them (base64), so it can be mailed
or attached to a CI run on its own. Both hold the same sections: what produced the report
(command, date, and the commit, versions and device recorded with the runs), the verdicts of
``bnsuite check`` (every entry's and relation's tested value, its CI and p, the CI level said
once under each table), what was not reproduced (each FAIL and contradiction with its difference,
CI and p) and what is not decided (with the seeds that would decide it), the measurements of every
configuration beside its random-init floor, and the plots (:mod:`suite.report.plots`,
:mod:`suite.report.speed`).

The title says what the numbers were measured against: ``measured against the paper`` when a
baseline holds a source's number or a relation, ``regression check against measured baselines``
when it holds regression entries only, ``measured against its baselines`` for other bounds (a
cell that learns beyond its floor), ``measurements`` without a baseline entry.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import TYPE_CHECKING

from suite.check.render import summary_line
from suite.check.results import CheckResult
from suite.report import plots, speed
from suite.report.data import (
    batch_series,
    bench_points,
    configurations,
    loss_histories,
    paper_marks,
    provenance,
)
from suite.report.difference import arms
from suite.report.tables import (
    Bullets,
    Table,
    config_table,
    entry_ci_note,
    not_reproduced,
    relation_ci_note,
    relation_table,
    undecided,
    verdict_table,
)

if TYPE_CHECKING:
    from suite.runner.plan import Plan

__all__ = ["Table", "config_table", "title", "write_report"]

Block = Table | Bullets | str


def title(result: CheckResult) -> str:
    """What the report holds: ``<name>: measured against the paper`` (a paper's numbers or
    claims: equivalence or reference entries, or relations), ``: regression check against
    measured baselines`` (regression entries only), ``: measured against its baselines`` (other
    bounds, e.g. learning beyond the floor), ``: measurements`` (nothing judged)."""
    kinds = {r.entry.kind for r in result.entries}
    if not result.entries and not result.relations:
        return f"{result.experiment}: measurements"
    if result.relations or kinds & {"equivalence", "reference"}:
        return f"{result.experiment}: measured against the paper"
    if kinds == {"regression"}:
        return f"{result.experiment}: regression check against measured baselines"
    return f"{result.experiment}: measured against its baselines"


def _figures(plan: Plan, result: CheckResult, out: Path) -> list[tuple[str, Path]]:
    configs = configurations(plan)
    metrics = [k for k, _ in plots.DIFFERENCE_PROBES]
    differences = arms(configs, metrics, result)
    paper = " beside the paper's" if any(a.paper is not None for a in differences) else ""
    drawn = (
        (
            "Accuracy per configuration (expected values of equivalence entries marked)",
            plots.accuracy_per_config(configs, paper_marks(result, configs), out / "accuracy.png"),
        ),
        (
            f"Difference from sync/sync per BN arm: measured (95 % CI){paper}",
            plots.difference(differences, out / "difference.png"),
        ),
        (
            "Accuracy against batch size",
            plots.accuracy_vs_batch(batch_series(plan), out / "batch.png"),
        ),
        ("Throughput per method", speed.throughput(configs, out / "throughput.png")),
        (
            "Throughput per method, BN strategy and process count (bench cells)",
            speed.throughput_by_strategy(bench_points(plan), out / "throughput_strategy.png"),
        ),
        ("Loss curves", plots.loss_curves(loss_histories(plan, configs), out / "loss.png")),
    )
    return [(name, path) for name, path in drawn if path is not None]


def _sections(plan: Plan, result: CheckResult, notes: str, command: str):
    from suite import __version__

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
    sections: list[tuple[str, list[Block]]] = [
        ("What produced this report", [Table(["", ""], produced)]),
    ]
    against_paper = title(result).endswith("the paper")
    if result.entries:
        heading = "Paper vs measured" if against_paper else "Baseline vs measured"
        blocks: list[Block] = [verdict_table(result), entry_ci_note(result)]
        sections.append((f"{heading} ({summary_line(result)})", [b for b in blocks if b]))
    if result.relations:
        blocks = [relation_table(result), relation_ci_note(result)]
        sections.append(("Relations", [b for b in blocks if b]))
    failed = not_reproduced(result)
    if failed:
        sections.append(("Not reproduced", [Bullets(failed)]))
    open_ = undecided(result)
    if open_:
        sections.append(("Not decided (inconclusive)", [Bullets(open_)]))
    sections.append(
        ("Every configuration beside its random-init floor", [config_table(configurations(plan))])
    )
    if notes:
        sections.append(("Reading", [notes]))
    return sections


def write_report(
    plan: Plan,
    result: CheckResult,
    out: str | Path,
    *,
    command: str = "",
    notes: str = "",
) -> list[Path]:
    """Write ``report.md``, ``index.html`` and the PNGs into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(plan, result, out)
    heading = title(result)
    md = [f"# {heading}", "", plan.experiment.description, ""]
    body = [
        f"<h1>{html.escape(heading)}</h1>",
        f"<p>{html.escape(plan.experiment.description)}</p>",
    ]
    for name, blocks in _sections(plan, result, notes, command):
        md += [f"## {name}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        for block in blocks:
            if isinstance(block, str):
                md += [block, ""]
                body.append("".join(f"<p>{html.escape(p)}</p>" for p in block.split("\n\n")))
            else:
                md += [block.markdown(), ""]
                body.append(block.html())
    if figures:
        md += ["## Plots", ""]
        body.append("<h2>Plots</h2>")
        for name, path in figures:
            md += [f"![{name}]({path.name})", ""]
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
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
