"""Real `relay serve` processes for cluster tests, and what the tests ask of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from relay.admission.tokens import hash_token, new_token
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like
from tests.integration.relay_harness import (
    NOTICE_CONFIRMED,
    OPERATOR_TOKEN,
    SIMULATOR_KEY,
    STATE_KEY,
)
from tests.support.relay_cli import foreign_free_environ

URL_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+/)")
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
SPEECH = encode_opus(speech_like(1.6))
HEARTBEAT_S = 0.5


def relay_env(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = foreign_free_environ()
    env.update(
        {
            "RELAY__SERVER__DATA_DIR": str(data_dir),
            "RELAY__SERVER__DRAIN_TIMEOUT_S": "2",
            "RELAY__SERVER__CREATE_DEMO_USER": "false",
            "RELAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "RELAY__CLUSTER__STATE_KEY": STATE_KEY,
            "RELAY__CLUSTER__HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "RELAY__CLUSTER__RECOVER_AFTER_S": "1",
            # Generous for a loaded test machine: a slower Redis answer would fail the
            # shared limits open (by design) and make cap assertions depend on load.
            "RELAY__CACHE__REDIS_TIMEOUT_S": "2",
            # The holder saves the seconds used every 2 s (10 by default): the tests
            # that kill it wait for the first save before they do.
            "RELAY__SESSION__PROGRESS_INTERVAL_S": "2",
        }
    )
    env.update(extra)
    return env


def serve_command(port: int, *args: str) -> list[str]:
    """``relay serve`` in this interpreter, as a process of its own."""
    return [sys.executable, "-m", "relay", "serve", "--port", str(port), *args]


class RelayProcess:
    """One `relay serve` (or supervisor of workers) started with ``--port 0`` (or
    ``port``: the one of a relay started again under the same instance id)."""

    def __init__(self, proc: asyncio.subprocess.Process, lines: list[str], log: Path) -> None:
        self.proc = proc
        self.lines = lines
        # Its log (stderr), for the messages of failing tests: a file, as the test
        # services' logs (tests/support/postgres.py), so nothing has to read it meanwhile.
        self.log = log
        self.url = ""
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        cwd: Path,
        env: dict[str, str],
        *args: str,
        banner: str = "listening on",
        port: int = 0,
    ) -> RelayProcess:
        log = cwd / f"relay-{secrets.token_hex(4)}.log"
        log_file = await asyncio.to_thread(log.open, "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *serve_command(port, *args),
                env=env,
                cwd=cwd,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
            )
        finally:
            log_file.close()  # the child writes to its own copy
        relay = cls(proc, [], log)
        try:
            await asyncio.wait_for(relay._read_banner(), timeout=120)
        except BaseException:
            await relay.stop(signal.SIGKILL, within=5)  # nothing left running or pending
            raise
        relay._reader = asyncio.create_task(relay._drain_stdout())
        return relay

    async def _read_banner(self) -> None:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                log = await asyncio.to_thread(self.log_tail)
                raise AssertionError(f"relay exited early: {self.lines}\nits log:\n{log}")
            line = raw.decode().strip()
            self.lines.append(line)
            if match := URL_LINE.search(line):
                self.url = match[1]
                return

    async def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().strip())

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    async def stop(self, sig: int = signal.SIGTERM, within: float = 60) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), within)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        assert self.proc.returncode is not None
        return self.proc.returncode


async def add_user(dsn: str, *, seconds: int = 1800) -> tuple[str, str]:
    """Insert a user straight into PostgreSQL; return (email, token)."""
    token = new_token()
    email = f"u{secrets.token_hex(4)}@example.test"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO users (email, token_hash, remaining_seconds) VALUES ($1, $2, $3)",
            email,
            hash_token(token),
            seconds,
        )
    finally:
        await conn.close()
    return email, token


async def revocation_lag(dsn: str, session_id: str) -> float:
    """Seconds from the user's revocation (committed) to the session's end, both by the
    database's clock: the command's own latency, not the CLI's start-up."""
    rows = await sql(
        dsn,
        "SELECT EXTRACT(EPOCH FROM s.ended_at - u.revoked_at)::float AS lag"
        " FROM interview_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        session_id,
    )
    return float(rows[0]["lag"])


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


async def poll(
    check: Callable[[], Awaitable[Any]], within: float, what: str, interval: float = 0.05
) -> Any:
    """Call ``check`` until it returns a truthy value; fail naming ``what`` after ``within``."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


class Client:
    """HTTP to one relay; each request on a fresh connection (so SO_REUSEPORT spreads)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body, dict(r.headers)

    async def create(self, token: str) -> tuple[int, Any, dict[str, str]]:
        return await self.call("POST", "api/realtime-session", token=token, json=NOTICE_CONFIRMED)

    async def cluster(self) -> dict[str, Any]:
        status, body, _ = await self.call("GET", "api/stats?scope=cluster", headers=OPERATOR)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def session(self, token: str, session_id: str) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"api/sessions/{session_id}", token=token)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def holder_of(self, session_id: str) -> str | None:
        """The member the cluster view shows holding ``session_id`` live (None: not yet)."""
        view = await self.cluster()
        return next(
            (
                s["member"]
                for s in view["sessions"]
                if s["session_id"] == session_id and s["state"] == "active"
            ),
            None,
        )

    async def go_live(
        self, token: str, session_id: str, browser: BrowserPeer | None = None
    ) -> tuple[BrowserPeer, dict[str, Any]]:
        """Exchange the session here with a real aiortc browser (``browser``, else one
        that speaks ``SPEECH``); wait until connected."""
        browser = BrowserPeer(payloads=SPEECH) if browser is None else browser
        try:
            body = {"session_id": session_id, "type": "offer", "sdp": await browser.offer()}
            status, answer, _ = await self.call(
                "POST", "api/webrtc-exchange", token=token, json=body
            )
            assert status == 201, answer
            await browser.accept(answer["sdp"])
            await browser.wait_connected(within=15)
        except BaseException:
            await browser.close()
            raise
        return browser, answer


def fresh_connections() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def simulator_env(base_url: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": SIMULATOR_KEY, "OPENAI_BASE_URL": base_url}


@contextlib.asynccontextmanager
async def listener_cut_off(
    admin_dsn: str, dsn: str, application_name: str, database: str = "relaydb"
) -> AsyncIterator[asyncpg.Connection]:
    """A relay's LISTEN connection (``application_name``) cut off from ``database`` for the
    block: a connection to ``dsn`` is opened first (yielded, to write while nobody
    listens), then the database refuses new connections and the listening one is
    terminated, so it cannot come back until the block ends and connections are allowed
    again."""
    admin = await asyncpg.connect(admin_dsn)
    writer = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        try:
            cut = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND application_name = $2",
                database,
                application_name,
            )
            assert cut == 1
            yield writer
        finally:
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    finally:
        await writer.close()
        await admin.close()


async def row_if_ended(dsn: str, sid: str) -> dict[str, Any] | None:
    """The session's row once it has ended (for ``poll``), else None."""
    rows = await sql(
        dsn,
        "SELECT state, end_reason, debited_seconds, used_seconds, parts, interview_id"
        " FROM interview_sessions WHERE id=$1",
        sid,
    )
    return dict(rows[0]) if rows[0]["state"] in ("ended", "failed") else None


async def demo_token(relay: RelayProcess) -> str:
    """The demo candidate's token a ``relay serve`` with the demo user prints at start."""

    async def printed() -> str | None:
        return next((line for line in relay.lines if line.startswith("rt_")), None)

    token: str = await poll(printed, 30, "the demo token")
    return token
