"""The management commands do not load what only `relay serve` needs: the media stack
(aiortc, PyAV, the bridges), the application and aiohttp's server. Loading them more
than doubled the start of every `relay users ...` (relay.cli). The probe imports the
command line and parses a command, as `python -m relay` does before running it."""

from __future__ import annotations

import json
import subprocess
import sys

SERVE_ONLY = ("aiortc", "av", "relay.app", "relay.media", "relay.services")
# aiohttp's server is aiohttp.web and its aiohttp.web_* modules.
SERVER = "aiohttp.web"

PROBE = """
import json, sys
from relay.cli import _parser
_parser().parse_args(["users", "add", "--email", "a@example.test"])
print(json.dumps(sorted(sys.modules)))
"""


def test_a_management_command_imports_nothing_only_serve_needs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(done.stdout)
    serve_only = [
        m
        for m in loaded
        if m.startswith(SERVER) or any(m == p or m.startswith(p + ".") for p in SERVE_ONLY)
    ]
    assert serve_only == []
    # The commands' own dependencies are there (the probe is not vacuous).
    assert {"relay.cli", "relay.manage", "relay.db", "asyncpg"} <= set(loaded)
