"""A whole relay on loopback for integration tests: real PostgreSQL, optional real
Redis, the simulator over real HTTP as the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.admission.tokens import hash_token, new_token
from relay.config import Settings
from relay.db import Store
from relay.media import fastloop
from relay.observability.metrics import MetricsRegistry
from relay.services import Services

OPERATOR_TOKEN = "op-test-token-0123456789abcdefghij"
# Seals pending sessions' upstream secrets (base64 of 32 bytes); fixed so that relays of
# one test can open each other's.
STATE_KEY = "dGVzdC1zdGF0ZS1rZXktMzItYnl0ZXMtbG9uZy4uLi4="
SIMULATOR_KEY = "sk-sim-local"
# A session request's body saying the recording notice was shown (as the page sends it).
NOTICE_CONFIRMED = {"recording_notice_shown": True}
# Migrating a test's fresh database, with room for a loaded machine.
SCHEMA_WITHIN_S = 30.0


def relay_settings(
    database_url: str,
    upstream_base_url: str,
    *,
    redis_url: str = "",
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Production defaults with test-sized timeouts; ``overrides`` per section."""
    s = Settings()
    s = s.replace("server", create_demo_user=False, operator_token=OPERATOR_TOKEN)
    s = s.replace(
        "database",
        url=database_url,
        query_timeout_s=1.0,
        connect_timeout_s=1.0,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
        pool_min_size=1,
    )
    s = s.replace("cache", redis_url=redis_url, redis_timeout_s=0.2, breaker_open_s=60.0)
    s = s.replace("upstream", api_key=SIMULATOR_KEY, base_url=upstream_base_url)
    # Recordings of each relay in a directory of their own (the default is under data_dir).
    s = s.replace("recording", directory=tempfile.mkdtemp(prefix="recordings-"))
    s = s.replace("cluster", state_key=STATE_KEY, heartbeat_interval_s=0.5)
    # The forwarding path of the test (the ``media_path`` fixture sets it process-wide).
    s = s.replace(
        "media", compiled_fast_path=fastloop.enabled(), forwarding_thread=fastloop.thread_enabled()
    )
    for section, changes in (overrides or {}).items():
        s = s.replace(section, **changes)
    return s


@dataclass
class RelayHarness:
    client: TestClient[web.Request, web.Application]
    services: Services
    database_url: str

    async def add_user(
        self, *, seconds: int = 1800, active: bool = True, email: str | None = None
    ) -> str:
        """Insert a user straight into PostgreSQL (not through the relay); return its token."""
        token = new_token()
        # Each test's database starts empty and the relay migrates it in the background
        # (relay.db.bootstrap): on a loaded machine a test can get here first. A relay whose
        # database stays out of reach never gets ready; the insert then says why.
        if not self.services.store.schema_ready:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SCHEMA_WITHIN_S):
                    await self.services.store.wait_schema_ready()
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(
                "INSERT INTO users (email, token_hash, active, remaining_seconds)"
                " VALUES ($1, $2, $3, $4)",
                email or f"u{secrets.token_hex(4)}@example.test",
                hash_token(token),
                active,
                seconds,
            )
        finally:
            await conn.close()
        return token

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    async def wait_session_closed(self, session_id: str, within: float = 10.0) -> None:
        """Until the session's row is closed (``ended`` or ``failed``). The registry lets a
        session go before the row's closing write lands (relay.sessions.finishes), so a
        test that saw it leave the registry waits here before reading the row."""
        deadline = time.monotonic() + within
        while True:
            rows = await self.sql("SELECT state FROM interview_sessions WHERE id = $1", session_id)
            if rows and rows[0]["state"] in ("ended", "failed"):
                return
            assert time.monotonic() < deadline, f"{session_id}'s row not closed within {within}s"
            await asyncio.sleep(0.02)

    def counter(self, name: str, **labels: Any) -> float:
        """Current value of a counter (summed over unspecified labels)."""
        snapshot = self.services.metrics.snapshot().get(name)
        if snapshot is None:
            return 0.0
        if isinstance(snapshot, float | int):
            return float(snapshot)
        return float(
            sum(
                row["value"]
                for row in snapshot
                if all(str(row.get(k)) == str(v) for k, v in labels.items())
            )
        )

    async def create_session(
        self,
        token: str | None,
        *,
        headers: dict[str, str] | None = None,
        confirm_notice: bool = True,
        **kwargs: Any,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /api/realtime-session. Without a body of its own (``json``/``data``) the
        request says the recording notice was shown, as the candidate page does
        (``confirm_notice=False``: no body at all)."""
        if confirm_notice and "json" not in kwargs and "data" not in kwargs:
            kwargs["json"] = NOTICE_CONFIRMED
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.client.post("/api/realtime-session", headers=hdrs, **kwargs) as resp:
            body = await resp.json()
            return resp.status, body, dict(resp.headers)


@contextlib.asynccontextmanager
async def migrated_store(
    database_url: str, metrics: MetricsRegistry, **database: Any
) -> AsyncIterator[Store]:
    """A ``Store`` on ``database_url`` (the tests' database settings, ``database`` overriding
    them), opened and migrated; closed on the way out, whatever happened."""
    config = relay_settings(database_url, "http://127.0.0.1:9/v1").database
    store = Store(database_url, config.model_copy(update=database), metrics)
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()
