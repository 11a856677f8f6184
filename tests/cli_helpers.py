"""Helpers shared by the CLI and runner tests: write an experiment file, call ``bnsuite``, fill a
filesystem."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import yaml

from suite.cli import main


def write_experiment(folder: Path, name: str, base: dict[str, Any], **keys: Any) -> Path:
    """``folder/name.yaml`` holding ``name``, the ``base`` keys and ``keys`` on top."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **base, **keys}, sort_keys=False))
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def fill(folder: Path) -> None:
    """Write ``folder/filler`` until its filesystem refuses more (ENOSPC)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
