"""What the runner shows while cells train: a progress bar per cell and plain-text tables.

On a terminal the bar is redrawn in place (``\\r``) at most ten times a second; otherwise (CI
logs, files) a full line is printed when a cell starts training, every ``every_s`` seconds and at
its last step, so a log stays short and still shows that the job is alive.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

BAR_WIDTH = 24
TTY_REFRESH_S = 0.1


def bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########...............]``: ``round(width · step / total)`` filled cells."""
    filled = 0 if total <= 0 else min(width, round(width * step / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _number(value: Any, fmt: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "nan" if math.isnan(value) else format(value, fmt)
    return "-"


def progress_text(label: str, step: int, total: int, loss: Any, img_s: Any) -> str:
    """``<label> [####....] 12/44 loss 3.2101 img/s 118``."""
    return (
        f"{label} {bar(step, total)} {step}/{total} loss {_number(loss, '.4f')} "
        f"img/s {_number(img_s, '.0f')}"
    )


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
        self._width = 0

    def start(self, label: str) -> None:
        """A new cell: remember its label; reset the clock."""
        self.label = label
        self._last = -math.inf
        self._width = 0

    def update(self, step: int, total: int, loss: Any = None, img_s: Any = None) -> None:
        now = time.monotonic()
        final = step >= total
        if self.tty:
            if not final and now - self._last < TTY_REFRESH_S:
                return
            text = progress_text(self.label, step, total, loss, img_s)
            pad = " " * max(self._width - len(text), 0)
            self.stream.write("\r" + text + pad)
            self._width = len(text)
        else:
            if not final and now - self._last < self.every_s:
                return
            self.stream.write(progress_text(self.label, step, total, loss, img_s) + "\n")
        self._last = now
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends a bar in progress first)."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the header."""
    text = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(text[0]), rule, *(line(r) for r in text[1:])])


def percent(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (``-`` when missing)."""
    return _number(100 * value if isinstance(value, int | float) else None, ".2f")


def rate(value: Any) -> str:
    return _number(value, ".1f")
