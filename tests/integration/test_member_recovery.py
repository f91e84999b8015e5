"""The heartbeat's recovery of dead members (relay.cluster.members.recover_dead) on a real
PostgreSQL: each of its cases closes what it must and nothing else, and a call with
nothing to recover (what almost every heartbeat finds) changes nothing; and its
reconciliation of what this member holds against the rows."""

from __future__ import annotations

import secrets
from functools import partial
from typing import Any

from relay.cluster import members
from relay.observability.metrics import MetricsRegistry
from tests.integration import cluster_helpers
from tests.integration.conftest import MakeRelay
from tests.integration.live_session import live_session
from tests.integration.relay_harness import migrated_store

DEAD_AFTER_S = 10.0
GRACE_S = 30.0


async def test_recovery_closes_what_dead_members_left_and_nothing_else(database_url: str) -> None:
    async with migrated_store(database_url, MetricsRegistry()) as store:
        sql = partial(cluster_helpers.sql, database_url)

        async def sessions() -> dict[str, dict[str, Any]]:
            rows = await sql(
                "SELECT id, state, end_reason, debited_seconds, holder_lost_at IS NOT NULL AS lost"
                " FROM interview_sessions"
            )
            return {r["id"]: dict(r) for r in rows}

        [user] = await sql(
            "INSERT INTO users (email, token_hash, remaining_seconds) VALUES ($1, $2, 1800)"
            " RETURNING id",
            "recovery@example.test",
            secrets.token_hex(32),
        )
        await sql(
            "INSERT INTO relay_members (id, address, version, pid, started_at, heartbeat_at)"
            " VALUES ('alive', 'a', 'v', 1, now(), now()),"
            " ('dead', 'd', 'v', 2, now(), now() - interval '20 seconds')"
        )

        async def session(sid: str, state: str, member: str, extra: str = "") -> None:
            await sql(
                "INSERT INTO interview_sessions (id, user_id, request_id, state, model, dialect,"
                " relay_instance, expires_at, connected_at) VALUES ($1, $2, 'r', $3, 'm', 'ga',"
                " $4, now() + interval '1 hour',"
                " CASE WHEN $3 = 'pending' THEN NULL ELSE now() - interval '120 seconds' END)",
                sid,
                user["id"],
                state,
                member,
            )
            if extra:
                await sql(f"UPDATE interview_sessions SET {extra} WHERE id = $1", sid)

        await session("on_alive", "active", "alive")
        await session("on_dead", "active", "dead")
        await session("resumable_on_dead", "active", "dead", "resume_token_hash = 'h'")
        await session(
            "lost_past_grace",
            "active",
            "gone",
            "holder_lost_at = now() - interval '100 seconds', used_seconds = 42",
        )
        await session(
            "lost_within_grace", "active", "gone", "holder_lost_at = now() - interval '5 seconds'"
        )
        # Hung up while nobody held them (the hang-up written on the row): they ended so.
        await session("hung_up_on_dead", "active", "dead", "end_reason = 'operator_hangup'")
        await session(
            "hung_up_past_grace",
            "active",
            "gone",
            "holder_lost_at = now() - interval '100 seconds', used_seconds = 7,"
            " end_reason = 'hangup'",
        )
        await session(
            "pending_of_gone", "pending", "gone", "expires_at = now() - interval '100 seconds'"
        )
        await session("pending_of_alive", "pending", "alive", "expires_at = now() - interval '1 h'")

        recovered = await members.recover_dead(
            store, dead_after_s=DEAD_AFTER_S, resume_grace_s=GRACE_S
        )
        rows = await sessions()
        again = await members.recover_dead(store, dead_after_s=DEAD_AFTER_S, resume_grace_s=GRACE_S)
        unchanged = await sessions()
        [after] = await sql("SELECT remaining_seconds FROM users WHERE id = $1", user["id"])
        left = await sql("SELECT id FROM relay_members ORDER BY id")

    assert (recovered.members, recovered.sessions, recovered.expired_pending) == (["dead"], 4, 1)

    def seen(sid: str) -> tuple[object, ...]:
        r = rows[sid]
        return (r["state"], r["end_reason"], r["debited_seconds"], r["lost"])

    assert seen("on_alive") == ("active", None, None, False)
    # Charged from its connection to its member's last heartbeat: 100 s.
    assert seen("on_dead") == ("failed", "relay_lost", 100, False)
    assert seen("resumable_on_dead") == ("active", None, None, True)
    assert seen("lost_past_grace") == ("failed", "relay_lost", 42, True)
    assert seen("lost_within_grace") == ("active", None, None, True)
    assert seen("pending_of_gone") == ("failed", "expired", 0, False)
    assert seen("pending_of_alive") == ("pending", None, None, False)
    assert seen("hung_up_on_dead") == ("ended", "operator_hangup", 100, False)
    assert seen("hung_up_past_grace") == ("ended", "hangup", 7, True)
    assert after["remaining_seconds"] == 1800 - 100 - 42 - 100 - 7
    assert [m["id"] for m in left] == ["alive"]
    # Nothing left to recover: a second call finds nothing and changes nothing.
    assert (again.members, again.sessions, again.expired_pending) == ([], 0, 0)
    assert unchanged == rows


async def test_a_holder_that_missed_a_hang_up_ends_its_session_from_the_row(
    make_relay: MakeRelay,
) -> None:
    """A hang-up served by another member is written on the live row beside the command
    it sends (SessionRows.request_hangup); a holder whose command got lost ends the
    session at its next reconciliation, with that reason."""
    relay = await make_relay()
    async with live_session(relay, email="missed-hangup@example.test") as live:
        await relay.sql(
            "UPDATE interview_sessions SET end_reason = 'operator_hangup' WHERE id = $1",
            live.session_id,
        )
        await relay.wait_session_closed(live.session_id, within=10.0)
    [row] = await relay.sql(
        "SELECT state, end_reason FROM interview_sessions WHERE id = $1", live.session_id
    )
    assert (row["state"], row["end_reason"]) == ("ended", "operator_hangup")
