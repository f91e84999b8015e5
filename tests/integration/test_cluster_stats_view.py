"""GET /api/stats?scope=cluster carries every field the dashboard's cluster mode reads
(static/console-live.js), with the right types, for two relays sharing one PostgreSQL: this
relay and another one holding a live bridged interview."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.live_session import live_session
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
DASHBOARD_JS = Path(__file__).resolve().parents[2] / "static" / "console-live.js"

# What each field the page reads must be (None allowed nowhere: the page shows "–" for a
# missing value, but a live member always has all of them).
INSTANCE_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "address": str,
    "version": str,
    "pid": int,
    "live_sessions": int,
    "load": (int, float),
    "draining": bool,
    "heartbeat_age_s": (int, float),
    "started_at": str,
}
SESSION_TYPES: dict[str, type | tuple[type, ...]] = {
    "session_id": str,
    "member": str,
    "user": str,
    "state": str,
    "age_s": (int, float),
}


def fields_read(function: str, var: str) -> set[str]:
    """The ``var.field`` names read in ``function`` of the dashboard's script."""
    source = DASHBOARD_JS.read_text()
    start = source.index(f"function {function}(")
    end = source.index("\n}\n", start)
    return set(re.findall(rf"\b{var}\.(\w+)", source[start:end]))


async def cluster_stats(relay: RelayHarness) -> dict[str, Any]:
    async with relay.client.get("/api/stats?scope=cluster", headers=OPERATOR) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def test_the_page_reads_only_fields_this_test_checks() -> None:
    # If the page starts reading another field, this test must learn its type first.
    assert fields_read("renderInstances", "m") == set(INSTANCE_TYPES)
    assert fields_read("renderClusterSessions", "s") == set(SESSION_TYPES)
    assert fields_read("renderCluster", "body") == {"instances", "sessions", "member"}


async def test_cluster_json_has_what_the_dashboard_reads(make_relay: MakeRelay) -> None:
    a = await make_relay(instance_id="member-a")
    b = await make_relay(instance_id="member-b")
    async with live_session(b, email="jane.doe@example.com") as live:

        async def b_reports_it() -> dict[str, Any] | None:
            body = await cluster_stats(a)
            # B's heartbeat may have summed the session up before its legs connected
            # ("pending"): the next one says "active".
            states = {s["session_id"]: s["state"] for s in body["sessions"]}
            return body if states.get(live.session_id) == "active" else None

        body = await poll(b_reports_it, 10, "B's live session in A's cluster view")

    assert body["member"] == "member-a"
    members = {m["id"]: m for m in body["instances"]}
    assert set(members) == {"member-a", "member-b"}
    for member in members.values():
        for field, kind in INSTANCE_TYPES.items():
            assert isinstance(member[field], kind), (field, member)
        # Fresh: within 3 heartbeats (0.5 s each in tests), by the database's clock.
        assert 0 <= member["heartbeat_age_s"] <= 1.5, member
        assert member["draining"] is False
    assert members["member-b"]["live_sessions"] == 1
    assert members["member-a"]["live_sessions"] == 0
    assert members["member-b"]["load"] > 0

    (session,) = [s for s in body["sessions"] if s["session_id"] == live.session_id]
    for field, kind in SESSION_TYPES.items():
        assert isinstance(session[field], kind), (field, session)
    assert session["member"] == "member-b"
    assert session["user"] == "j***e@example.com"
    assert session["state"] == "active"
    assert session["age_s"] >= 0
    # The heartbeat row and the answer hold the masked address only.
    assert "jane.doe" not in json.dumps(body)
    rows = await a.sql("SELECT sessions::text FROM relay_members WHERE id = 'member-b'")
    assert rows and "jane.doe" not in rows[0][0]
