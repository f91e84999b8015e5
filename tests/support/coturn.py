"""A throwaway coturn (Debian's ``coturn`` package) on 127.0.0.1 for TURN tests.

It authenticates with the TURN REST scheme (``use-auth-secret`` + ``static-auth-secret``),
listens on 127.0.0.1:<free port> (UDP and TCP), relays from 127.0.0.1 only with a small
relay port range, allows loopback peers (every peer in the tests is on loopback), has no
TLS, no CLI and no external address, and bounded quotas. The methods block; tests call
them from fixtures, or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import launch_on_free_port, spawn, terminate

_TIMEOUT_S = 10.0
TURNSERVER = "/usr/bin/turnserver"
UCLIENT = "/usr/bin/turnutils_uclient"


class CoturnError(RuntimeError):
    """turnserver failed to start."""


def coturn_installed() -> bool:
    return Path(TURNSERVER).is_file() and Path(UCLIENT).is_file()


class CoturnServer:
    host = "127.0.0.1"

    def __init__(self, parent: Path, secret: str, *, relay_ports: tuple[int, int]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="coturn-", dir=parent))
        self.secret = secret
        self.relay_ports = relay_ports
        self.port = 0
        self.log_file = self.workdir / "turn.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"

    def config(self, port: int) -> str:
        low, high = self.relay_ports
        return "\n".join(
            [
                f"listening-ip={self.host}",
                f"relay-ip={self.host}",
                f"listening-port={port}",
                f"min-port={low}",
                f"max-port={high}",
                "use-auth-secret",
                f"static-auth-secret={self.secret}",
                "realm=relay.test",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-cli",
                "no-software-attribute",
                # Every peer in the tests is on 127.0.0.1, which coturn refuses by default.
                "allow-loopback-peers",
                "total-quota=50",
                "user-quota=20",
                "max-allocate-lifetime=600",
                f"userdb={self.workdir / 'turndb'}",
                f"pidfile={self.workdir / 'turn.pid'}",
                f"log-file={self.log_file}",
                "simple-log",
                "",
            ]
        )

    def start(self) -> None:
        def launch(port: int) -> None:
            conf = self.workdir / "turnserver.conf"
            conf.write_text(self.config(port))
            self._process = spawn(
                [TURNSERVER, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait_listening(port)
            self.port = port

        launch_on_free_port(launch, lambda exc: isinstance(exc, CoturnError))

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise CoturnError(f"turnserver exited: {self.log_tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex((self.host, port)) == 0:
                    return
            if time.monotonic() > deadline:
                terminate(self._process, 15, 5.0)
                raise CoturnError(f"turnserver not listening after {_TIMEOUT_S}s")
            time.sleep(0.02)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def allocate(self, username: str, credential: str) -> subprocess.CompletedProcess[str]:
        """One real allocation with ``turnutils_uclient`` (a few messages client to client
        through the relay); exit status 0 when coturn accepted the credentials."""
        return subprocess.run(
            [UCLIENT, "-y", "-c", "-n", "2", "-m", "1", "-u", username, "-w", credential]
            + ["-p", str(self.port), self.host],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, 15, 5.0)
            self._process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
