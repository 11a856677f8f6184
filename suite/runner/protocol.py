"""The line protocol between a cell's process and the runner that watches it.

The cell process writes one event per line on stdout, ``@bnsuite {"event": ..., ...}`` (compact
JSON after a fixed marker); every other line (library warnings, tracebacks, torchrun's own
output) is plain log text. The marker may appear after a prefix (torchrun can prefix rank output),
so :func:`parse` looks for it anywhere in the line.

Events, in the order a cell emits them:

=============  ================================================================================
``device``     ``name``, ``pid``: where the cell runs (recorded as tag ``suite.device``)
``metrics``    ``step``, ``values``: the loss and schedules every ``cell.log_every`` steps
``progress``   ``step``, ``total``, ``loss``, ``img_s``: after every training step
``result``     ``metrics``: the final metrics returned by ``train_cell``
``error``      ``reason`` (one line: ``<ExceptionType>: <message>``), ``traceback``
=============  ================================================================================

Non-finite floats are written as JSON ``NaN``/``Infinity`` (Python's ``json`` reads them back).
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

MARKER = "@bnsuite "
EVENTS = ("device", "metrics", "progress", "result", "error")


def encode(event: str, **fields: Any) -> str:
    """``@bnsuite {"event": event, **fields}`` (one line, no trailing newline)."""
    if event not in EVENTS:
        raise ValueError(f"event {event!r} is not one of {', '.join(EVENTS)}")
    return MARKER + json.dumps({"event": event, **fields}, separators=(",", ":"), default=str)


def emit(event: str, stream: IO[str] | None = None, **fields: Any) -> None:
    """Write one event line and flush (the runner renders progress as it arrives)."""
    out = stream if stream is not None else sys.stdout
    out.write(encode(event, **fields) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event dict of a protocol line; ``None`` for plain log text or a malformed event."""
    at = line.find(MARKER)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(MARKER) :])
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        return None
    return event
