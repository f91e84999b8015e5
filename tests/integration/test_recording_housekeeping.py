"""What a relay finds on disk at start: recordings rendered but not stored, ready ones that
still hold their packet logs (finalised by an older version), rendered files that no
longer match their manifest, and a render that fails. Real packet logs rendered by the
real renderer, real rows in PostgreSQL, the relay's own start-up recovery."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from relay.admission.tokens import hash_token, new_token
from relay.db.migrate import migrate
from relay.recording import packetlog, render
from relay.recording.recorder import META
from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import encode_opus
from tests.integration.recording_helpers import RATE, tone

INSTANCE = "test-instance"  # make_relay's
SOURCES = {"candidate.rlog", "events.jsonl", "meta.json"}
RENDERED = {"recording.ogg", "transcript.jsonl", "manifest.json"}


def recorded_session(root: Path, name: str) -> Path:
    """A session directory as the recorder leaves it: meta, one leg's packet log (a
    second of tone), the clock marks."""
    directory = root / f"is_{name}"
    directory.mkdir(parents=True)
    (directory / META).write_text(
        json.dumps(
            {"recording_id": f"rec_{name}", "session_id": f"is_{name}", "instance_id": INSTANCE}
        )
    )
    with open(directory / "candidate.rlog", "wb") as f:
        f.write(packetlog.MAGIC)
        for i, payload in enumerate(encode_opus(tone(440, 1.0))):
            f.write(packetlog.encode(0.1 + i * 0.02, i, i * 960, 7, 0, RATE, payload))
    clock = [
        {"kind": "clock", "event": "active", "offset": 0.1},
        {"kind": "clock", "event": "end", "offset": 1.1},
    ]
    (directory / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in clock))
    return directory


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def left_by_a_previous_run(root: Path) -> tuple[Path, Path, Path, Path]:
    """(rendered not stored, ready with its logs, rendered then changed, unrenderable)."""
    unstored, legacy, tampered, unrenderable = (recorded_session(root, c * 16) for c in "abcd")
    (unrenderable / "recording.ogg").mkdir()  # a directory where the audio goes
    for directory in (unstored, legacy, tampered):
        render.render(str(directory), "ogg", str(directory), False)
    with open(tampered / "recording.ogg", "ab") as f:
        f.write(b"\0")
    return unstored, legacy, tampered, unrenderable


async def test_start_up_stores_checks_and_clears_what_a_previous_run_left(
    make_relay: MakeRelay, database_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    # Rendered, not yet stored (the relay stopped in between): checked, stored, cleared.
    # Ready, rendered by a version that kept the packet logs: cleared once checked.
    # Rendered, then its audio changed on disk: not stored, the packet logs kept.
    # Not rendered, and the audio cannot be written: failed, the packet logs kept.
    unstored, legacy, tampered, unrenderable = await asyncio.to_thread(left_by_a_previous_run, root)

    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, timeout_s=60)
        user = await conn.fetchval(
            "INSERT INTO users (email, token_hash, remaining_seconds)"
            " VALUES ('h@example.test', $1, 0) RETURNING id",
            hash_token(new_token()),
        )
        for directory, status in (
            (unstored, "rendering"),
            (legacy, "ready"),
            (tampered, "rendering"),
            (unrenderable, "recording"),
        ):
            session_id = directory.name
            await conn.execute(
                "INSERT INTO interview_sessions (id, user_id, request_id, state, model, dialect,"
                " relay_instance, expires_at) VALUES ($1, $2, 'req_x', 'ended', 'm', 'ga', $3,"
                " now())",
                session_id,
                user,
                INSTANCE,
            )
            await conn.execute(
                "INSERT INTO recordings (id, session_id, status, storage, location,"
                " relay_instance) VALUES ($1, $2, $3, 'local', $4, $5)",
                "rec_" + session_id[3:],
                session_id,
                status,
                str(directory),
                INSTANCE,
            )
    finally:
        await conn.close()

    relay = await make_relay(overrides={"recording": {"directory": str(root)}})

    async def settled() -> dict[str, tuple[str, str | None]]:
        rows = await relay.sql("SELECT id, status, status_reason FROM recordings")
        found = {r["id"][4:5]: (r["status"], r["status_reason"]) for r in rows}
        return found if all(s in ("ready", "failed") for s, _ in found.values()) else {}

    statuses = await poll(settled, 60, "every recording ready or failed")

    def cleared() -> bool:
        return SOURCES.isdisjoint(names(legacy))

    await poll(lambda: asyncio.to_thread(cleared), 10, "the legacy recording's logs removed")
    assert statuses["a"] == ("ready", None)
    assert await asyncio.to_thread(names, unstored) == RENDERED
    assert statuses["b"] == ("ready", None)
    assert await asyncio.to_thread(names, legacy) == RENDERED
    status, reason = statuses["c"]
    assert status == "failed" and reason is not None
    assert reason.startswith("verify failed (packet logs kept): recording.ogg: ")
    assert await asyncio.to_thread(names, tampered) >= SOURCES
    status, reason = statuses["d"]
    assert status == "failed" and reason is not None
    assert reason.startswith("render failed: IsADirectoryError")
    assert await asyncio.to_thread(names, unrenderable) >= SOURCES
    assert relay.counter("relay_recordings_failed_total", stage="verify") == 1
    assert relay.counter("relay_recordings_failed_total", stage="render") == 1
    events = await relay.sql("SELECT type, data->>'recording_id' AS r FROM webhook_events")
    assert sorted((e["r"][4:5], e["type"]) for e in events) == [
        ("a", "recording.ready"),
        ("c", "recording.failed"),
        ("d", "recording.failed"),
    ]
