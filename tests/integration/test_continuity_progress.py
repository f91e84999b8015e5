"""The progress of every session of a process goes to PostgreSQL in one statement
(relay.sessions.continuity.ContinuityKeeper), on a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from relay.admission.tokens import hash_token, new_token
from relay.media.conversation import Role, TranscriptItem
from relay.observability.metrics import MetricsRegistry
from relay.sessions.continuity import ContinuityKeeper, ContinuityRows
from relay.sessions.rows import SessionRows
from tests.integration.cluster_helpers import poll
from tests.integration.relay_harness import migrated_store


@dataclass
class Kept:
    keeper: ContinuityKeeper
    metrics: MetricsRegistry
    dsn: str

    def statements(self) -> float:
        return self.metrics.counter("relay_db_queries_total", "", ["query"]).value(
            query="save_progress"
        )

    async def used(self) -> dict[str, float | None]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT id, used_seconds FROM interview_sessions ORDER BY id")
        finally:
            await conn.close()
        return {r["id"]: r["used_seconds"] for r in rows}


async def _sessions(dsn: str, rows: list[tuple[str, str, str | None]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        user = await conn.fetchval(
            "INSERT INTO users (email, token_hash, remaining_seconds)"
            " VALUES ('p@example.test', $1, 0) RETURNING id",
            hash_token(new_token()),
        )
        for session_id, state, claim in rows:
            await conn.execute(
                "INSERT INTO interview_sessions (id, user_id, request_id, state, model, dialect,"
                " relay_instance, expires_at, claim_token) VALUES ($1, $2, 'req_p', $3, 'm',"
                " 'ga', 'i1', now() + interval '1 hour', $4)",
                session_id,
                user,
                state,
                claim,
            )
    finally:
        await conn.close()


@pytest.fixture
async def kept(database_url: str) -> AsyncIterator[Kept]:
    metrics = MetricsRegistry(process_metrics=False)
    async with migrated_store(database_url, metrics) as store:
        keeper = ContinuityKeeper(store, metrics, flush_s=0.2)
        try:
            yield Kept(keeper, metrics, database_url)
        finally:
            await keeper.close()


async def test_the_progress_of_many_sessions_is_one_statement(kept: Kept) -> None:
    await _sessions(
        kept.dsn,
        [(f"s_{i}", "active", None) for i in range(5)]
        + [("s_ended", "ended", None), ("s_held", "active", "claim-a")],
    )
    for i in range(5):
        kept.keeper.session(f"s_{i}", None).on_progress(1.0 + i)
    kept.keeper.session(f"s_{0}", None).on_progress(9.5)  # the newest of a session wins
    kept.keeper.session("s_ended", None).on_progress(3.0)  # ended: not moved
    kept.keeper.session("s_held", "claim-b").on_progress(4.0)  # another holder's: not moved

    async def written() -> dict[str, float | None] | None:
        used = await kept.used()
        return used if used["s_4"] is not None else None

    used = await poll(written, 10, "the progress written")
    assert used == {
        "s_0": 9.5,
        "s_1": 2.0,
        "s_2": 3.0,
        "s_3": 4.0,
        "s_4": 5.0,
        "s_ended": None,
        "s_held": None,
    }
    assert kept.statements() == 1

    # The next round is another single statement; the rightful holder's row moves.
    kept.keeper.session("s_held", "claim-a").on_progress(6.0)
    kept.keeper.session("s_1", None).on_progress(12.0)

    async def second() -> dict[str, float | None] | None:
        used = await kept.used()
        return used if used["s_held"] is not None else None

    used = await poll(second, 10, "the second round written")
    assert used["s_held"] == 6.0 and used["s_1"] == 12.0
    assert kept.statements() == 2


async def test_progress_waiting_for_its_flush_is_written_at_close(database_url: str) -> None:
    metrics = MetricsRegistry(process_metrics=False)
    async with migrated_store(database_url, metrics) as store:
        await _sessions(database_url, [("s_late", "connecting", None)])
        # A flush an hour away: only the close can have written it.
        keeper = ContinuityKeeper(store, metrics, flush_s=3600)
        keeper.session("s_late", None).on_progress(7.0)
        await keeper.close()
        assert (await Kept(keeper, metrics, database_url).used()) == {"s_late": 7.0}


async def test_the_conversation_is_kept_while_the_session_is_live_only(database_url: str) -> None:
    """session_transcript serves continuity (a resume, a take-over): whatever ends a session
    deletes its text, and an item written after the end is not kept (migration 013)."""
    metrics = MetricsRegistry(process_metrics=False)
    async with migrated_store(database_url, metrics) as store:
        await _sessions(
            database_url,
            [
                ("is_ended", "active", None),
                ("is_failed", "active", None),
                ("is_live", "active", None),
            ],
        )
        continuity = ContinuityRows(store)
        for session_id in ("is_ended", "is_failed", "is_live"):
            roles: tuple[Role, Role] = ("user", "assistant")
            for position, role in enumerate(roles):
                item = TranscriptItem(role, f"{session_id} says {position}", position, position)
                await continuity.add_transcript_item(session_id, item)
        # The relay's own finish, and a close by housekeeping's kind of statement.
        await SessionRows(store).finish_session(
            "is_ended", state="ended", end_reason="hangup", duration_seconds=3.0
        )
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE interview_sessions SET state = 'failed', end_reason = 'relay_lost'"
                " WHERE id = 'is_failed'"
            )
            kept = await conn.fetch(
                "SELECT session_id, count(*) AS n FROM session_transcript GROUP BY session_id"
            )
            assert {r["session_id"]: r["n"] for r in kept} == {"is_live": 2}
            # Late: the bridge's last item after the row closed.
            await continuity.add_transcript_item("is_ended", TranscriptItem("user", "late", 9.0, 2))
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM session_transcript WHERE session_id = 'is_ended'"
                )
                == 0
            )
            # What sessions ended before migration 013 left (written straight, as then):
            # housekeeping deletes it in batches, and never a live session's.
            for position in range(3):
                await conn.execute(
                    "INSERT INTO session_transcript (session_id, position, role, text, at_s)"
                    " VALUES ('is_failed', $1, 'user', 'left behind', 0)",
                    position,
                )
            assert await continuity.purge_ended(2) == 2
            assert await continuity.purge_ended(2) == 1
            assert await continuity.purge_ended(2) == 0
        finally:
            await conn.close()
        assert [i.text for i in await continuity.transcript("is_live")] == [
            "is_live says 0",
            "is_live says 1",
        ]


async def test_an_interviews_conversation_outlives_its_sessions_until_it_closes(
    database_url: str,
) -> None:
    """An interview's sessions keep their text past their end while the interview is in
    progress (a rejoin seeds the next session with it), and lose it when the interview
    closes, whichever ends first (migration 015); housekeeping's purge leaves it too."""
    metrics = MetricsRegistry(process_metrics=False)
    async with migrated_store(database_url, metrics) as store:
        await _sessions(
            database_url,
            [("is_first", "active", None), ("is_second", "active", None)],
        )
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO interviews (id, user_id, invite_token_hash, instructions,"
                " max_duration_s, expires_at, status, created_by)"
                " SELECT $1, id, $2, 'Ask.', 600, now() + interval '1 day', 'in_progress',"
                " 'operator' FROM users",
                "iv_" + "a" * 32,
                "b" * 64,
            )
            await conn.execute("UPDATE interview_sessions SET interview_id = $1", "iv_" + "a" * 32)
            continuity = ContinuityRows(store)
            for session_id in ("is_first", "is_second"):
                item = TranscriptItem("user", f"{session_id} says", 1.0, 0)
                await continuity.add_transcript_item(session_id, item)

            async def kept() -> dict[str, int]:
                rows = await conn.fetch(
                    "SELECT session_id, count(*) AS n FROM session_transcript GROUP BY 1"
                )
                return {r["session_id"]: r["n"] for r in rows}

            # The first fails (the candidate may rejoin): its text stays, purge or not.
            await SessionRows(store).finish_session(
                "is_first", state="failed", end_reason="upstream_error", duration_seconds=3.0
            )
            assert await continuity.purge_ended(10) == 0
            assert await kept() == {"is_first": 1, "is_second": 1}
            # The interview closes while its second session is still live: all of it goes,
            # and what the live one writes later goes at its end.
            await conn.execute(
                "UPDATE interviews SET status = 'cancelled', end_reason = 'cancelled'"
            )
            assert await kept() == {}
            await continuity.add_transcript_item(
                "is_second", TranscriptItem("assistant", "late", 2.0, 1)
            )
            assert await kept() == {"is_second": 1}
            await SessionRows(store).finish_session(
                "is_second", state="ended", end_reason="cancelled", duration_seconds=4.0
            )
            assert await kept() == {}
            # Left behind by a close racing a session's end (written straight): purged.
            await conn.execute(
                "INSERT INTO session_transcript (session_id, position, role, text, at_s)"
                " VALUES ('is_first', 5, 'user', 'left behind', 0)"
            )
            assert await continuity.purge_ended(10) == 1
        finally:
            await conn.close()


async def test_a_rejoin_reads_the_earlier_sessions_conversation_in_order(
    database_url: str,
) -> None:
    """What a new session of an interview is seeded with: the ended sessions created before
    it, each in its own order, the sessions by their start; not a later or a live one's,
    not another interview's."""
    metrics = MetricsRegistry(process_metrics=False)
    async with migrated_store(database_url, metrics) as store:
        await _sessions(
            database_url,
            [
                ("is_a", "active", None),
                ("is_b", "active", None),
                ("is_new", "pending", None),
                ("is_other", "active", None),
            ],
        )
        mine, other = "iv_" + "c" * 32, "iv_" + "d" * 32
        conn = await asyncpg.connect(database_url)
        try:
            for interview_id, token_hash in ((mine, "e" * 64), (other, "f" * 64)):
                await conn.execute(
                    "INSERT INTO interviews (id, user_id, invite_token_hash, instructions,"
                    " max_duration_s, expires_at, status, created_by)"
                    " SELECT $1, id, $2, 'Ask.', 600, now() + interval '1 day', 'in_progress',"
                    " 'operator' FROM users",
                    interview_id,
                    token_hash,
                )
            # Started one after the other (a, b, then the rejoin's new one).
            for offset, session_id in enumerate(("is_a", "is_b", "is_new")):
                await conn.execute(
                    "UPDATE interview_sessions SET interview_id = $2,"
                    " created_at = now() - make_interval(secs => 100 - $3)"
                    " WHERE id = $1",
                    session_id,
                    mine,
                    float(offset),
                )
            await conn.execute(
                "UPDATE interview_sessions SET interview_id = $1 WHERE id = 'is_other'", other
            )
        finally:
            await conn.close()
        continuity = ContinuityRows(store)
        # b was itself seeded with a's two items: its own positions start after them.
        for session_id, said in (
            ("is_a", [(0, "a0"), (3, "a1")]),
            ("is_b", [(2, "b0"), (4, "b1")]),
            ("is_other", [(0, "x")]),
        ):
            for position, text in said:
                await continuity.add_transcript_item(
                    session_id, TranscriptItem("user", text, 1.0, position)
                )
        assert (await continuity.earlier_conversation(mine, "is_new")).items == ()
        rows = SessionRows(store)
        for session_id in ("is_b", "is_a", "is_other"):
            await rows.finish_session(
                session_id, state="failed", end_reason="upstream_error", duration_seconds=1.0
            )
        earlier = await continuity.earlier_conversation(mine, "is_new")
        assert [i.text for i in earlier.items] == ["a0", "a1", "b0", "b1"]
        # Before whatever the new session says (its own positions start at 0).
        assert [i.position for i in earlier.items] == [-4, -3, -2, -1]
        assert 0 <= earlier.gap_s < 60
        # A take-over of b reads what came before b only; a session of another interview
        # reads nothing of this one.
        assert [i.text for i in (await continuity.earlier_conversation(mine, "is_b")).items] == [
            "a0",
            "a1",
        ]
        assert (await continuity.earlier_conversation(mine, "is_other")).items == ()
