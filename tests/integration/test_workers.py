"""`relay serve --workers 2` on the embedded defaults: one port, two full relays sharing
one embedded PostgreSQL; sessions spread over both and go live on each; the cluster view
lists both workers; SIGTERM drains both; a resume reaching the worker that does not hold
the interview is forwarded to the one that does; a worker killed mid-interview (started
again by the supervisor under the same member id), or a single `relay serve` (started
again under the same instance id, as systemd or docker do), hands the interview over as
part 2 to the page's resume, or it is closed `relay_lost` once the grace has passed."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from relay.db.embedded_pg import start_embedded_postgres
from relay.upstream.simulator.server import RunningSimulator
from relay.upstream.simulator.state import CallRecord
from tests.integration.cluster_helpers import (
    OPERATOR,
    Client,
    RelayProcess,
    demo_token,
    fresh_connections,
    poll,
    relay_env,
    row_if_ended,
    simulator_env,
    sql,
)
from tests.integration.continuity_helpers import Page, a_full_turn, go_live_at, told_it_resumed
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like
from tests.integration.relay_harness import OPERATOR_TOKEN
from tests.support.processes import wait_exited

pytestmark = pytest.mark.slow

# Sessions tried before both workers must have one (each lands on either with p = 1/2).
MAX_TRIES = 20


async def test_two_workers_share_one_port_and_one_embedded_database(
    traversable_tmp_path: Path,
) -> None:
    data_dir = traversable_tmp_path / "state"
    env = relay_env(
        data_dir,
        {
            "RELAY__SERVER__CREATE_DEMO_USER": "true",
            "RELAY__LIMITS__PER_USER_CONCURRENT_SESSIONS": "50",
            "RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE": "1000",
            # The demo user's 1800 s are shared by every session it runs at once.
            "RELAY__SESSION__MAX_DURATION_S": "60",
        },
    )
    env.pop("RELAY__CLUSTER__STATE_KEY")  # the embedded default: generated into data_dir
    relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    browsers: list[BrowserPeer] = []
    # Attaching to the embedded server keeps it up after the relay stops, to read the rows.
    embedded = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        assert any("(2 workers)" in line for line in relay.lines)

        token = await demo_token(relay)
        assert (data_dir / "state.key").stat().st_mode & 0o777 == 0o600

        async with fresh_connections() as http:
            client = Client(http, relay.url)

            # A worker that dies is started again, under the same member id.
            async def two_workers() -> dict[str, int] | None:
                view = await client.cluster()
                pids = {m["id"]: m["pid"] for m in view["instances"]}
                return pids if len(pids) == 2 else None

            before = await poll(two_workers, 15, "two workers in the cluster view")
            victim = sorted(before)[1]
            os.kill(before[victim], signal.SIGKILL)

            async def restarted() -> bool:
                now = await two_workers()
                return bool(now and now[victim] != before[victim])

            await poll(restarted, 60, f"{victim} to be started again")

            live_on: dict[str, str] = {}  # member -> a session live there
            for _ in range(MAX_TRIES):
                status, created, _ = await client.create(token)
                assert status == 201, created
                # No OpenAI key: the workers' one shared simulator, and candidates are told.
                assert created["simulated"] is True
                sid = created["session_id"]
                browser, _ = await client.go_live(token, sid)
                browsers.append(browser)
                member = await poll(
                    partial(client.holder_of, sid), 15, f"session {sid} to be active"
                )
                live_on.setdefault(member, sid)
                if len(live_on) == 2:
                    break
            assert len(live_on) == 2, f"every session landed on {list(live_on)}"

            view = await client.cluster()
            workers = sorted(m["id"] for m in view["instances"])
            port = relay.url.rstrip("/").rsplit(":", 1)[1]
            host = os.uname().nodename
            assert workers == [f"{host}:{port}/w0", f"{host}:{port}/w1"]
            assert sorted(live_on) == workers
            pids = [m["pid"] for m in view["instances"]]
            assert relay.pid not in pids and len(set(pids)) == 2

        # SIGTERM drains both workers, then the supervisor exits cleanly.
        assert await relay.stop() == 0
        for pid in pids:
            await wait_exited(pid, 10)
        rows = await sql(
            embedded.dsn,
            "SELECT state, end_reason, relay_instance FROM interview_sessions"
            " WHERE id = ANY($1::text[])",
            list(live_on.values()),
        )
        assert sorted(r["relay_instance"] for r in rows) == workers
        assert {(r["state"], r["end_reason"]) for r in rows} == {("failed", "relay_shutdown")}
        left = await sql(embedded.dsn, "SELECT count(*) AS n FROM relay_members")
        assert left[0]["n"] == 0
    finally:
        for browser in browsers:
            await browser.close()
        await relay.stop()
        await asyncio.to_thread(embedded.stop)


async def test_workers_start_with_the_operator_token_in_a_file(
    traversable_tmp_path: Path,
) -> None:
    """The operator token as a Docker secret (RELAY_OPERATOR_TOKEN_FILE): the supervisor
    hands its workers the token it read as RELAY_OPERATOR_TOKEN, and a worker that also
    found the _FILE name refused to start ("both set"), again and again."""
    secret = traversable_tmp_path / "operator-token"
    secret.write_text(OPERATOR_TOKEN + "\n")
    env = relay_env(traversable_tmp_path / "state", {})
    env.pop("RELAY_OPERATOR_TOKEN")
    env["RELAY_OPERATOR_TOKEN_FILE"] = str(secret)
    try:
        # Two workers are up in seconds; without them the banner never comes.
        relay = await asyncio.wait_for(
            RelayProcess.start(traversable_tmp_path, env, "--workers", "2"), 60
        )
    except TimeoutError:
        raise AssertionError("the workers did not start (the relay's log says why)") from None
    try:
        assert any("(2 workers)" in line for line in relay.lines)
        async with fresh_connections() as http:
            client = Client(http, relay.url)  # the token of the file opens the workers

            async def both_workers() -> bool:
                return len((await client.cluster())["instances"]) == 2

            await poll(both_workers, 15, "both workers in the cluster view")
    finally:
        assert await relay.stop() == 0


# Resumes in a row until both ways were seen, each landing on either worker (p = 1/2): at
# least this many, and at most this many (all on one side: a chance of 1 in 2**15).
MIN_RESUMES = 4
MAX_RESUMES = 16
# The page's waits between resume attempts (static/page-interview.js: 1, 2, 4… s).
PAGE_BACKOFF_S = (1.0, 2.0, 4.0)
# What the candidate says after each resume: short, so that each turn is quick.
SHORT_ANSWER = encode_opus(speech_like(0.5))


async def resume_as_the_page(
    client: Client, token: str, session_id: str, resume_token: str, pages: list[BrowserPeer]
) -> tuple[Page, dict[str, Any], str]:
    """Resume as static/page-interview.js does: a new call with a new offer, sent with an
    Idempotency-Key; a retryable refusal (503 "moving between servers") is tried again
    with a new call after the page's backoff. (page, answer, the X-Request-ID of the
    worker the request reached)."""
    for backoff_s in (*PAGE_BACKOFF_S, 0.0):
        page = Page(payloads=SHORT_ANSWER)
        pages.append(page)
        body = {"resume_token": resume_token, "type": "offer", "sdp": await page.offer()}
        status, answer, headers = await client.call(
            "POST",
            f"api/sessions/{session_id}/resume",
            token=token,
            json=body,
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        if status == 201:
            await page.accept(answer["sdp"])
            await page.wait_connected(within=15)
            return page, answer, headers["X-Request-ID"]
        await page.close()
        assert status == 503 and answer["error"]["retryable"] and backoff_s, answer
        await asyncio.sleep(backoff_s)  # the page's countdown before its next attempt
    raise AssertionError("unreachable: the last attempt returns or fails")


async def test_a_resume_reaching_either_worker_is_served_by_the_one_holding_it(
    traversable_tmp_path: Path, simulator: RunningSimulator
) -> None:
    data_dir = traversable_tmp_path / "state"
    env = relay_env(
        data_dir,
        {"RELAY__SERVER__CREATE_DEMO_USER": "true", **simulator_env(simulator.base_url)},
    )
    env.pop("RELAY__CLUSTER__STATE_KEY")  # the embedded default: generated into data_dir
    relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    pages: list[BrowserPeer] = []
    try:
        token = await demo_token(relay)
        async with fresh_connections() as http:
            client = Client(http, relay.url)

            async def workers() -> list[str] | None:
                ids = sorted(m["id"] for m in (await client.cluster())["instances"])
                return ids if len(ids) == 2 else None

            both = await poll(workers, 15, "two workers in the cluster view")
            status, created, _ = await client.create(token)
            assert status == 201, created
            sid = created["session_id"]
            page, resume_token = await go_live_at(client, token, sid, pages)
            await a_full_turn(page, heard=True)
            [call] = simulator.state.calls.values()
            held_by = await poll(lambda: client.holder_of(sid), 15, f"session {sid} to be active")
            assert held_by in both

            reached_the_holder = forwarded = 0
            for resumes in range(1, MAX_RESUMES + 1):
                await page.close()  # the connection drops; the page resumes at once
                items = call.conversation_items
                page, answer, reached = await resume_as_the_page(
                    client, token, sid, resume_token, pages
                )
                assert answer["session_id"] == sid
                assert answer["resume_token"] != resume_token
                resume_token = answer["resume_token"]
                # The answer's request id is the holder's: the one of the worker the
                # request reached when that was the holder; when the other worker
                # forwarded it there (once or more), the holder's own ending with it.
                if answer["request_id"] == reached:
                    reached_the_holder += 1
                else:
                    assert answer["request_id"].endswith(f".{reached}"), (answer, reached)
                    forwarded += 1
                await page.wait_type("relay.session.reconnected", 10)
                # Audio both ways again, on the same upstream call and conversation.
                await a_full_turn(page, heard=True)
                assert call.conversation_items >= items + 2
                assert list(simulator.state.calls.values()) == [call] and not call.hung_up
                assert await client.holder_of(sid) == held_by  # served there, never taken over
                if resumes >= MIN_RESUMES and reached_the_holder and forwarded:
                    break
            assert reached_the_holder and forwarded, (
                f"{reached_the_holder} resumes reached the holder, {forwarded} were forwarded"
            )
            assert (await client.session(token, sid))["parts"] == 1
    finally:
        for browser in pages:
            await browser.close()
        await relay.stop()


# Whose process is killed mid-interview: a worker of `relay serve --workers 2` (started
# again by the supervisor), or a single `relay serve` (started again on the same port, so
# under the same instance id, as systemd or docker do).
KILLED = pytest.mark.parametrize("workers", [2, 1], ids=["worker", "instance"])


@dataclass
class Killed:
    """An interview live on a relay process that was then killed (kill -9) and started
    again under the same member id, the page not yet resuming."""

    relay: RelayProcess  # the one running now
    client: Client
    dsn: str  # the embedded database's, to read the rows
    token: str
    session_id: str
    page: Page
    resume_token: str
    first_call: CallRecord
    held_by: str  # the killed process's member id
    workers: list[str]  # every member id
    kept: list[Any]  # the conversation the holder wrote, (role, text) rows
    charged_s: float  # the seconds charged the holder wrote


@contextlib.asynccontextmanager
async def an_interview_whose_process_was_killed(
    tmp_path: Path,
    simulator: RunningSimulator,
    pages: list[BrowserPeer],
    extra: dict[str, str],
    *,
    workers: int,
) -> AsyncIterator[Killed]:
    """``workers``: 2, a worker of `relay serve --workers 2` holds the interview; 1, a
    single `relay serve` does."""
    data_dir = tmp_path / "state"
    env = relay_env(
        data_dir,
        {
            "RELAY__SERVER__CREATE_DEMO_USER": "true",
            **simulator_env(simulator.base_url),
            # As by default, longer than the supervisor takes to start a worker again: the
            # other worker does not take the killed one for dead meanwhile, so what happens
            # to the interview is the restarted worker's doing.
            "RELAY__CLUSTER__RECOVER_AFTER_S": "30",
            **extra,
        },
    )
    env.pop("RELAY__CLUSTER__STATE_KEY")  # the embedded default: generated into data_dir
    worker_args = ("--workers", str(workers)) if workers > 1 else ()
    relay = await RelayProcess.start(tmp_path, env, *worker_args)
    processes = [relay]
    # Attaching to the embedded server (it stays up while either side uses it) to read rows.
    embedded = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        token = await demo_token(relay)
        async with fresh_connections() as http:
            client = Client(http, relay.url)

            async def members() -> dict[str, int] | None:
                pids = {m["id"]: m["pid"] for m in (await client.cluster())["instances"]}
                return pids if len(pids) == workers else None

            before = await poll(members, 15, f"{workers} members in the cluster view")
            status, created, _ = await client.create(token)
            assert status == 201, created
            sid = created["session_id"]
            page, resume_token = await go_live_at(client, token, sid, pages)
            await a_full_turn(page)
            [first_call] = simulator.state.calls.values()
            held_by = await poll(lambda: client.holder_of(sid), 15, f"session {sid} to be active")

            async def kept() -> tuple[list[Any], float] | None:
                # The holder writes the conversation and the time charged as it goes.
                rows = await sql(
                    embedded.dsn,
                    "SELECT role, text FROM session_transcript WHERE session_id=$1"
                    " ORDER BY position",
                    sid,
                )
                used = await sql(
                    embedded.dsn, "SELECT used_seconds FROM interview_sessions WHERE id=$1", sid
                )
                charged = used[0]["used_seconds"]
                return (rows, float(charged)) if len(rows) >= 2 and charged else None

            kept_rows, charged_s = await poll(
                kept, 25, "the holder to keep the transcript and the time charged"
            )

            os.kill(before[held_by], signal.SIGKILL)
            if workers == 1:
                # What systemd or docker does: the same command again, on the same port
                # (without the demo user, whose token each start replaces: the candidate's
                # token stays valid, as a real user's does).
                await relay.stop()  # reaps the killed process
                again = env | {"RELAY__SERVER__CREATE_DEMO_USER": "false"}
                relay = await RelayProcess.start(tmp_path, again, port=relay.port)
                processes.append(relay)
                assert client.base == relay.url

            async def restarted() -> bool:
                now = await members()
                return bool(now and now[held_by] != before[held_by])

            # The page notices the loss only once ICE gives up: by then the supervisor (or
            # systemd) has started the process again, under the same member id.
            await poll(restarted, 60, f"{held_by} to be started again")
            yield Killed(
                relay=relay,
                client=client,
                dsn=embedded.dsn,
                token=token,
                session_id=sid,
                page=page,
                resume_token=resume_token,
                first_call=first_call,
                held_by=held_by,
                workers=sorted(before),
                kept=kept_rows,
                charged_s=charged_s,
            )
    finally:
        for browser in pages:
            await browser.close()
        for process in processes:
            await process.stop()
        await asyncio.to_thread(embedded.stop)


@KILLED
async def test_a_process_killed_mid_interview_hands_it_over_as_part_2(
    traversable_tmp_path: Path, simulator: RunningSimulator, workers: int
) -> None:
    """kill -9 of the process holding an interview (a worker, or a single instance): it is
    started again under the same member id, and the page's resume (whichever worker it
    reaches) goes on as part 2, as it does when a separate instance dies: a new upstream
    session seeded with the conversation so far, the seconds charged carried over, part
    1's recording finalised."""
    pages: list[BrowserPeer] = []
    async with an_interview_whose_process_was_killed(
        traversable_tmp_path, simulator, pages, {}, workers=workers
    ) as killed:
        client, token, sid = killed.client, killed.token, killed.session_id
        page, kept_rows, charged_before = killed.page, killed.kept, killed.charged_s
        await page.pc.close()
        again, answer, _ = await resume_as_the_page(client, token, sid, killed.resume_token, pages)
        assert answer["session_id"] == sid and answer["resume_token"] != killed.resume_token

        time_left = await told_it_resumed(again, kept_rows)
        # Part 1's page was told the whole limit when the interview became active.
        limit = (await page.wait_type("relay.session.time_left", 1))["seconds"]
        assert time_left["seconds"] <= limit - int(charged_before)
        # A new upstream session, seeded with the conversation so far (and a note).
        second = next(c for c in simulator.state.calls.values() if c is not killed.first_call)
        await simulator.state.wait_for(lambda: second.items_created == len(kept_rows) + 1, 10)

        async def taken_over() -> dict[str, Any] | None:
            rows = await sql(
                killed.dsn,
                "SELECT relay_instance, parts, state, end_reason FROM interview_sessions"
                " WHERE id=$1",
                sid,
            )
            # The row goes from connecting to active in its own write after the legs are
            # up, which may land after the page was told it resumed.
            return dict(rows[0]) if rows[0]["state"] != "connecting" else None

        row = await poll(taken_over, 10, "the taken-over interview's row to leave connecting")
        # Taken over by whichever member the resume reached: none held anything of it.
        assert row["relay_instance"] in killed.workers
        assert (row["parts"], row["state"], row["end_reason"]) == (2, "active", None)
        await a_full_turn(again)

        status, _, _ = await client.call("DELETE", f"api/sessions/{sid}", token=token)
        assert status == 204
        final = await poll(lambda: row_if_ended(killed.dsn, sid), 15, "the interview to end")
        assert (final["end_reason"], final["parts"]) == ("hangup", 2)
        # Debited for both parts: the killed process's seconds carried over.
        assert final["debited_seconds"] >= charged_before

        async def parts() -> list[dict[str, Any]] | None:
            status, body, _ = await client.call("GET", "api/recordings?limit=200", headers=OPERATOR)
            assert status == 200, body
            mine = [i for i in body["items"] if i["session_id"] == sid]
            ready = sorted(i["part"] for i in mine if i["status"] == "ready")
            return mine if ready == [1, 2] else None

        # Part 1 finalised from what the killed process left on disk, part 2 as usual.
        recordings = await poll(parts, 60, "both parts of the recording to be ready")
        [first] = [i for i in recordings if i["part"] == 1]
        assert first["recovered_after_crash"] is True


# The grace of the test below: short, so that it passes soon after the kill.
SHORT_GRACE_S = 3


@KILLED
async def test_a_process_killed_mid_interview_nobody_resumes_is_closed_relay_lost(
    traversable_tmp_path: Path, simulator: RunningSimulator, workers: int
) -> None:
    """Not resumed within the grace: closed as a dead member's interview is (relay_lost,
    debited the seconds charged until the crash, by the heartbeat's recovery, which a
    single instance runs too), not at the process's start."""
    pages: list[BrowserPeer] = []
    async with an_interview_whose_process_was_killed(
        traversable_tmp_path,
        simulator,
        pages,
        {"RELAY__SESSION__RECONNECT_GRACE_S": str(SHORT_GRACE_S)},
        workers=workers,
    ) as killed:
        final = await poll(
            lambda: row_if_ended(killed.dsn, killed.session_id),
            SHORT_GRACE_S + 15,
            "the interview to be closed",
        )
        assert (final["state"], final["end_reason"], final["parts"]) == ("failed", "relay_lost", 1)
        # The seconds the killed process had charged (written as it went), nothing more.
        assert final["used_seconds"] >= killed.charged_s
        assert final["debited_seconds"] == math.ceil(final["used_seconds"])
