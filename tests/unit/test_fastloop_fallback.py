"""Without the compiled module (an install with no C compiler): the Python fast path, said so.

``pip install`` with ``CC=false`` leaves ``relay.media._fastloop`` out; a fresh interpreter
that cannot import it stands for that install here (docs/media.md, "Installing without a
compiler", has the real install checked by hand).
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import asyncio, json, sys
sys.modules["relay.media._fastloop"] = None  # as if it had never been built
from relay.media import fastloop, udp

async def main():
    sockets = udp.media_sockets(asyncio.get_running_loop())
    return sockets.snapshot()["forwarding"], sockets.compiled is None

forwarding, python_reads = asyncio.run(main())
print(json.dumps({"forwarding": forwarding, "python_reads": python_reads,
                  "doctor": fastloop.doctor_check()}))
"""


def test_an_install_without_the_compiled_loop_forwards_in_python_and_says_why() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    forwarding = report["forwarding"]
    assert forwarding["path"] == "python" and forwarding["compiled_built"] is False
    assert "relay.media._fastloop is not built" in forwarding["reason"]
    assert report["python_reads"] is True
    outcome, detail, todo = report["doctor"]
    assert outcome == "WARN" and detail.startswith("Python fast path")
    assert "C compiler" in todo
