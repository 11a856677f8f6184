"""What the README tells a new user to type is safe to type: advice that a test can keep true."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_tracking_server_advice_says_how_to_run_it_safely():
    """No suggested command listens on every interface (``--host 0.0.0.0``); the README says the
    server has no authentication by default and names the three remedies: a private interface
    (127.0.0.1 and an SSH tunnel), MLflow's ``--app-name basic-auth`` or an authenticating reverse
    proxy, and TLS."""
    commands = re.findall(r"`([^`]*mlflow server[^`]*)`", README)
    assert commands and not [c for c in commands if "0.0.0.0" in c]
    flat = " ".join(README.split())
    assert "no authentication by default" in flat
    assert "127.0.0.1" in flat and "ssh -L" in flat and "private interface" in flat
    assert "--app-name basic-auth" in flat and "reverse proxy that authenticates" in flat
    assert "TLS" in flat and "https://" in flat
