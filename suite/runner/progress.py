"""What the runner shows while cells train: a progress bar per cell and the tables, drawn by rich.

On a terminal the bar is rich's live display (steps, loss, img/s, elapsed and remaining time),
redrawn in place and removed when the cell ends, with the runner's messages printed above it.
Otherwise (CI logs, pipes, files) there are no control codes: one short line when a cell starts
training, one every ``every_s`` seconds and one at its last step, so a log stays short and still
shows that the job is alive. Tables (``plan``, ``run``'s summary, ``check``) are plain text in
rich's layout, the same on a terminal and in a log.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

TTY_REFRESH_PER_S = 10


def _number(value: Any, fmt: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "nan" if math.isnan(value) else format(value, fmt)
    return "-"


def progress_text(label: str, step: int, total: int, loss: Any, img_s: Any) -> str:
    """``<label> 12/44 loss 3.2101 img/s 118``: one line of the non-terminal output."""
    return f"{label} {step}/{total} loss {_number(loss, '.4f')} img/s {_number(img_s, '.0f')}"


class ProgressView:
    """Renders the progress events of one cell at a time on ``stream`` (stderr by default)."""

    def __init__(
        self, stream: IO[str] | None = None, *, tty: bool | None = None, every_s: float = 10.0
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.every_s = every_s
        self.label = ""
        self._last = -math.inf
        self._bar: Progress | None = None
        self._task: Any = None
        self._console = (
            Console(file=self.stream, force_terminal=True, highlight=False, emoji=False)
            if self.tty
            else None
        )

    def start(self, label: str) -> None:
        """A new cell: remember its label; reset the clock."""
        self.clear()
        self.label = label
        self._last = -math.inf

    def update(self, step: int, total: int, loss: Any = None, img_s: Any = None) -> None:
        if self._console is not None:
            self._live(step, total, loss, img_s)
            return
        now = time.monotonic()
        if step < total and now - self._last < self.every_s:
            return
        self._last = now
        self.stream.write(progress_text(self.label, step, total, loss, img_s) + "\n")
        self.stream.flush()

    def _live(self, step: int, total: int, loss: Any, img_s: Any) -> None:
        fields = {"loss": _number(loss, ".4f"), "img_s": _number(img_s, ".0f")}
        if self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  img/s {task.fields[img_s]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
                refresh_per_second=TTY_REFRESH_PER_S,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, completed=step, **fields)
        else:
            self._bar.update(self._task, total=total, completed=step, **fields)

    def message(self, text: str) -> None:
        """A line of its own (above the bar of a cell in progress)."""
        if self._console is None:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            self._console.print(Text(text))

    def clear(self) -> None:
        """End the bar of the current cell (a terminal's live display is removed)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


_RULE_UNDER_HEADER = box.SIMPLE_HEAD


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, a rule under the header, ``-`` for ``None``; never wrapped (a wide
    table stays one line per row in a log)."""
    table = Table(box=_RULE_UNDER_HEADER, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(Text(str(header)), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(Text("-" if v is None else str(v)) for v in row))
    out = io.StringIO()
    Console(file=out, width=100_000, color_system=None, highlight=False, emoji=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def percent(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (``-`` when missing)."""
    return _number(100 * value if isinstance(value, int | float) else None, ".2f")


def rate(value: Any) -> str:
    return _number(value, ".1f")
