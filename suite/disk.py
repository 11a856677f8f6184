"""A full disk, in words: is an exception a full disk, and how much space is left in a folder."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its ``__cause__`` (or ``__context__``), and so on, each once."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_full_error(exc: BaseException) -> bool:
    """True when ``exc`` or an exception in its chain is an ``OSError`` ENOSPC or EDQUOT."""
    return any(isinstance(e, OSError) and e.errno in FULL_ERRNOS for e in exception_chain(exc))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def free_bytes(folder: Path) -> int | None:
    """Bytes free to this user on the filesystem of ``folder`` (None when it cannot be read)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def free_space(folder: Path) -> str:
    """``12.0 KiB free of 1.0 MiB`` on the filesystem of ``folder``."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return f"free space unknown ({exc.strerror or exc})"
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
