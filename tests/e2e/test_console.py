"""The console's management views (/stats: Interviews, Sessions, Recordings, a recording's
page) in headless Chromium against a whole relay: real PostgreSQL, the simulator as the
interviewer, real aiortc candidates joining through the links the console made."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from playwright.async_api import Page, Route, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import RECORD_TEXTS, assert_focus_ring_seen, collect_page_errors
from tests.e2e.console_helpers import (
    DESKTOP,
    assert_accessible,
    collect_failed_responses,
    screenshots,
)
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    SPEECH,
    Joined,
    bearer,
    call,
    create_interview,
    create_key,
    invite_of,
    join,
)
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import wait_recording
from tests.integration.relay_harness import NOTICE_CONFIRMED, OPERATOR_TOKEN, RelayHarness

# The lists refresh every 5 s; a change shows within two refreshes on a loaded machine.
LISTED_WITHIN_MS = 15000
# The lists' refresh interval (static/console-list.js REFRESH_MS).
REFRESH_MS = 5000
# The console's page size (static/console-list.js).
PAGE = 50


async def speak_and_hear_a_reply(joined: Joined) -> None:
    """One turn each: the candidate speaks, the simulator transcribes it and answers."""
    mic = joined.browser.mic
    assert mic is not None
    mic.play(SPEECH)
    await joined.browser.wait_type("conversation.item.input_audio_transcription.completed", 20)
    await joined.browser.wait_type("response.output_audio_transcript.done", 20)
    await joined.browser.wait_type("output_audio_buffer.stopped", 20)


async def transcript_of(relay: RelayHarness, recording_id: str) -> list[dict[str, Any]]:
    async with relay.client.get(
        f"/api/recordings/{recording_id}/transcript", headers=bearer(OPERATOR_TOKEN)
    ) as resp:
        assert resp.status == 200
        text = await resp.text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def listing(directory: Path) -> list[str]:
    """The names in ``directory``; [] when it is gone."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def stamp_of(created_at: str) -> str:
    return datetime.fromisoformat(created_at).strftime("%Y-%m-%d-%H%M%S")


async def test_an_interview_made_in_the_console_is_listed_with_its_link_and_its_recording_plays(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
) -> None:
    relay = await make_relay()
    origin = str(relay.client.make_url("/")).rstrip("/")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    errors = collect_page_errors(page)
    failed = collect_failed_responses(page)
    await page.set_viewport_size(DESKTOP)
    await page.goto(f"{origin}/stats#token={OPERATOR_TOKEN}")
    await page.get_by_role("link", name="Interviews").click()
    await expect(page).to_have_url(re.compile(r"/stats#/interviews$"))
    await expect(page.locator("#interviews-empty")).to_be_visible()

    # The form: every field the API takes for a small team. Empty, it names what is missing.
    await page.get_by_text("New interview").click()
    await page.get_by_role("button", name="Create interview").click()
    email_box = page.get_by_label("Candidate's e-mail").first
    await expect(email_box).to_be_focused()
    await expect(email_box).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#iv-email-error")).to_be_visible()
    await expect(page.locator("#iv-instructions-error")).to_be_visible()
    await page.get_by_label("Candidate's e-mail").first.fill("ana@example.test")
    await page.get_by_label("Candidate's name").fill("Ana Pérez")
    await page.get_by_label("Instructions for the interviewer").fill(
        "You interview Ana for the backend role. Ask about queues. Rubric code 7f3e."
    )
    await page.get_by_label("Voice").fill("marin")
    await page.get_by_label("Language").select_option("es")
    await page.get_by_label("Length in minutes").fill("12")
    # Two days ahead in the browser's own time zone, as a person would pick it.
    local, expected_expiry = await page.evaluate(
        """() => {
            const at = new Date(Date.now() + 2 * 86400e3);
            at.setSeconds(0, 0);
            const p = (n) => String(n).padStart(2, "0");
            const local = `${at.getFullYear()}-${p(at.getMonth() + 1)}-${p(at.getDate())}` +
                `T${p(at.getHours())}:${p(at.getMinutes())}`;
            return [local, at.toISOString()];
        }"""
    )
    # What only the relay refuses comes back under its field.
    await page.get_by_label("Link works until").fill("9500-01-01T10:00")
    await page.get_by_role("button", name="Create interview").click()
    expiry_error = page.locator("#iv-expires-error")
    await expect(expiry_error).to_contain_text("too far in the future")
    await expect(page.get_by_label("Link works until")).to_be_focused()
    await expect(page.locator("#error")).to_contain_text("Could not create the interview")
    assert await relay.sql("SELECT id FROM interviews") == []
    await page.get_by_label("Link works until").fill(local)
    await expect(page.get_by_label("Record this interview")).to_be_checked()
    await assert_accessible(page, "the create form")
    await screenshots(page, artifact_path, "console-create-form", then=page.locator("#create-form"))

    await page.get_by_role("button", name="Create interview").click()
    created = page.locator("#created")
    await expect(created).to_be_visible()
    await expect(page.locator("#error")).to_be_hidden()
    await expect(created).to_be_focused()
    link_box = page.get_by_label("Candidate link")
    link = await link_box.input_value()
    assert re.fullmatch(re.escape(origin) + r"/#invite=ri_[A-Za-z0-9_-]+", link), link
    await page.locator("#created-copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == link
    await expect(page.locator("#status")).to_contain_text("Link copied")

    # Listed: candidate, status, times, its budget; its link copies from the row too.
    row = page.locator("#interviews tbody tr").first
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)
    await expect(row).to_contain_text("Ana Pérez")
    await expect(row).to_contain_text("scheduled")
    await expect(row).to_contain_text("0 s of 12 min")
    await page.evaluate("navigator.clipboard.writeText('')")
    await row.get_by_role("button", name="Copy link for ana@example.test").click()
    assert await page.evaluate("navigator.clipboard.readText()") == link

    # The relay has it as the form said.
    interview_id = await row.get_attribute("data-interview")
    assert interview_id is not None
    status, interview, _ = await call(relay, "GET", f"/api/interviews/{interview_id}")
    assert status == 200, interview
    assert interview["candidate"] == {
        "email": "ana@example.test",
        "name": "Ana Pérez",
        "user_id": interview["candidate"]["user_id"],
    }
    assert interview["instructions"].endswith("Rubric code 7f3e.")
    assert (interview["voice"], interview["language"]) == ("marin", "es")
    assert (interview["max_duration_s"], interview["recording"]) == (720, True)
    assert datetime.fromisoformat(interview["expires_at"]) == datetime.fromisoformat(
        expected_expiry.replace("Z", "+00:00")
    )
    await assert_accessible(page, "the interviews view")
    await screenshots(page, artifact_path, "console-interviews", then=row)

    # The link opens the candidate page, and its invite is this interview's credential.
    candidate_page = await page.context.new_page()
    answer = await candidate_page.goto(link)
    assert answer is not None and answer.status == 200
    await expect(candidate_page.get_by_role("heading", level=1)).to_have_text("Voice interview")
    await candidate_page.close()
    async with join(relay, invite_of({"candidate_url": link})) as joined:
        await expect(row).to_contain_text("in progress", timeout=LISTED_WITHIN_MS)
        await speak_and_hear_a_reply(joined)
        status, _, _ = await call(
            relay,
            "DELETE",
            f"/api/sessions/{joined.session_id}",
            bearer(invite_of({"candidate_url": link})),
        )
        assert status == 204
    item = await wait_recording(relay, joined.session_id, "ready")
    await expect(row).to_contain_text("completed", timeout=LISTED_WITHIN_MS)
    # Done: no link to copy, nothing to cancel (only the erasure is left to press); its
    # recording is a link to its page.
    await expect(row.get_by_role("button")).to_have_text(["Delete interview…", "Delete candidate…"])
    play = row.get_by_role("link", name=re.compile(r"^Play the recording of ana@example\.test"))
    await expect(play).to_be_visible(timeout=LISTED_WITHIN_MS)
    await expect(row).to_contain_text(re.compile(r"[1-9][0-9]*(\.[0-9])? s of 12 min"))
    await page.screenshot(
        path=str(artifact_path("console-interviews-completed-1280.png")), full_page=True
    )
    await play.click()
    await expect(page).to_have_url(re.compile(rf"/stats#/recordings/{item['id']}$"))

    # The recording's page: its candidate, its interview, the player, the conversation.
    await expect(
        page.get_by_role("heading", name="Interview with ana@example.test")
    ).to_be_visible()
    details = page.locator("#interview-meta")
    await expect(details).to_contain_text("Ana Pérez <ana@example.test>")
    await expect(details).to_contain_text("marin")
    await expect(details).to_contain_text("Spanish (es)")
    await expect(details).to_contain_text("completed (hangup)")
    await page.get_by_text("Instructions", exact=True).click()
    await expect(page.locator("#interview-instructions-text")).to_contain_text("Rubric code 7f3e.")
    await expect(page.locator("#recording-meta")).to_contain_text(interview_id)

    player = page.locator("#player")
    await wait_until_audio_loaded(page)
    duration = await player.evaluate("a => a.duration")
    assert abs(duration - item["duration_s"]) < 0.25, (duration, item["duration_s"])

    lines = await transcript_of(relay, item["id"])
    assert {line["speaker"] for line in lines} == {"candidate", "interviewer"}, lines
    turns = page.locator("#transcript > li")
    await expect(turns).to_have_count(len(lines))
    for i, line in enumerate(sorted(lines, key=lambda x: x["start"])):
        turn = turns.nth(i)
        speaker = "Candidate" if line["speaker"] == "candidate" else "Interviewer"
        await expect(turn.locator(".speaker")).to_have_text(speaker)
        await expect(turn.locator(".text")).to_have_text(line["text"])
        await expect(turn.locator(".at")).to_contain_text(_clock(line["start"]))
    # A click on a line plays the recording from where it was said.
    last = max(lines, key=lambda x: x["start"])
    assert last["start"] > 1.0, lines
    await turns.last.locator(".text").click()
    await page.wait_for_function(
        "([start]) => Math.abs(document.getElementById('player').currentTime - start) < 0.5",
        arg=[last["start"]],
    )
    await expect(turns.last).to_have_attribute("aria-current", "true")
    # The keyboard reaches the same thing through each line's time.
    await turns.first.get_by_role("button").focus()
    await page.keyboard.press("Enter")
    await page.wait_for_function(
        "([start]) => document.getElementById('player').currentTime < start",
        arg=[last["start"] - 0.5],
    )
    await player.evaluate("a => a.pause()")

    # Downloads named by the relay; the audio is the recorded file.
    stem = f"interview-ana-example.test-{stamp_of(item['created_at'])}"
    async with page.expect_download() as audio_download:
        await page.get_by_role("button", name="Download audio").click()
    audio = await audio_download.value
    assert audio.suggested_filename == f"{stem}.ogg"
    saved = await audio.path()
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == item["sha256"]
    async with page.expect_download() as transcript_download:
        await page.get_by_role("button", name="Download transcript").click()
    assert (await transcript_download.value).suggested_filename == f"{stem}.jsonl"

    # The audio endpoint serves ranges to the page's credential (what seeking would ask).
    ranged = await page.evaluate(
        """async ([path, token]) => {
            const headers = {Authorization: `Bearer ${token}`, Range: "bytes=0-99"};
            const r = await fetch(path, {headers});
            return [r.status, r.headers.get("Content-Range"), (await r.arrayBuffer()).byteLength];
        }""",
        [f"/api/recordings/{item['id']}/audio", OPERATOR_TOKEN],
    )
    assert ranged[0] == 206 and ranged[1].startswith("bytes 0-99/") and ranged[2] == 100, ranged

    await assert_accessible(page, "the recording page")
    await screenshots(page, artifact_path, "console-recording", then=turns.first)
    # The one refusal was the relay's 400 for the far expiry, logged by Chromium.
    assert failed == [f"400 {origin}/api/interviews"]
    assert [e for e in errors if "status of 400" not in e] == []


async def wait_until_audio_loaded(page: Page) -> None:
    await page.wait_for_function(
        "() => { const a = document.getElementById('player');"
        " return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0; }",
        timeout=LISTED_WITHIN_MS,
    )


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


async def test_end_and_delete_ask_first_and_leave_nothing_to_press(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
) -> None:
    relay = await make_relay()
    errors = collect_page_errors(page)
    failed = collect_failed_responses(page)
    interview = await create_interview(
        relay,
        candidate={"email": "jane.doe@example.com", "name": "Jane"},
        metadata={"requisition": "R-42", "team": "payments"},
    )
    await page.set_viewport_size(DESKTOP)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    async with join(relay, invite_of(interview)) as joined:
        sid = joined.session_id
        # Live: End is on screen at 1280 px, however wide the table.
        live_end = page.locator("#live").get_by_role("button", name=f"End session {sid}")
        await expect(live_end).to_be_in_viewport(timeout=LISTED_WITHIN_MS)
        box = await live_end.bounding_box()
        assert box is not None and box["x"] + box["width"] <= DESKTOP["width"], box

        # Sessions: the candidate's e-mail in full (the operator token), interview, date.
        await page.get_by_role("link", name="Sessions").click()
        row = page.locator(f'#sessions tr[data-session="{sid}"]')
        await expect(row).to_contain_text("jane.doe@example.com", timeout=LISTED_WITHIN_MS)
        await expect(row).to_contain_text(interview["id"][:11])
        await expect(row).to_contain_text("active")
        await expect(row.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
        await assert_accessible(page, "the sessions view")
        await page.screenshot(path=str(artifact_path("console-sessions-1280.png")), full_page=True)

        # End asks; "Keep it" keeps it.
        end = row.get_by_role("button", name=f"End session {sid}")
        await end.click()
        dialog = page.get_by_role("dialog", name="End this session?")
        await expect(dialog).to_be_visible()
        await expect(dialog).to_contain_text("jane.doe@example.com")
        await dialog.get_by_role("button", name="Keep it").click()
        await expect(dialog).to_be_hidden()
        await expect(end).to_be_focused()
        assert relay.services.registry.get(sid) is not None

        # The list refreshes every 5 s, and a row whose item changed is rebuilt (here one
        # field of the session is altered in the refresh's answer): the new row's End
        # takes the focus over, so a keyboard user stays where they were.
        async def altered(route: Route) -> None:
            response = await route.fetch()
            body = await response.json()
            for item in body["items"]:
                if item["session_id"] == sid:
                    item["debited_seconds"] = (item["debited_seconds"] or 0) + 1
            await route.fulfill(response=response, json=body)

        def is_list(url: str) -> bool:
            return "/api/sessions?" in url

        await end.evaluate("button => { button.dataset.probe = 'before'; }")
        await page.route(is_list, altered)
        await expect(end).not_to_have_attribute("data-probe", "before", timeout=LISTED_WITHIN_MS)
        await page.unroute(is_list, altered)
        await expect(end).to_be_focused()
        # Then, with the keyboard: Enter opens it, and End session ends it.
        await page.keyboard.press("Enter")
        await expect(dialog).to_be_visible()
        await dialog.get_by_role("button", name="End session").click()
        await wait_until(lambda: relay.services.registry.get(sid) is None, 10, "session ended")
    await expect(row).to_contain_text("ended", timeout=LISTED_WITHIN_MS)
    await expect(row).to_contain_text("operator_hangup")
    await expect(row.get_by_role("button")).to_have_count(0)

    # Recordings: candidate, interview, date; its page shows the interview's metadata.
    item = await wait_recording(relay, sid, "ready")
    await page.get_by_role("link", name="Recordings").click()
    rec = page.locator(f'#recordings tr[data-recording="{item["id"]}"]')
    await expect(rec).to_contain_text("jane.doe@example.com", timeout=LISTED_WITHIN_MS)
    await expect(rec).to_contain_text(interview["id"][:11])
    await expect(rec).to_contain_text("ready")
    await assert_accessible(page, "the recordings view")
    await page.screenshot(path=str(artifact_path("console-recordings-1280.png")), full_page=True)
    await rec.get_by_role("link", name=re.compile(r"^Open the recording of jane")).click()
    meta = page.locator("#interview-meta")
    await expect(meta).to_contain_text("requisition")
    await expect(meta).to_contain_text("R-42")
    await expect(meta).to_contain_text("payments")
    await page.go_back()
    await expect(page).to_have_url(re.compile(r"/stats#/recordings$"))

    # Delete asks; "Keep it" keeps it; then it goes, and its row has nothing left to press.
    delete = rec.get_by_role("button", name=re.compile(r"^Delete the recording of jane"))
    await delete.click()
    dialog = page.get_by_role("dialog", name="Delete this recording?")
    await expect(dialog).to_contain_text("removed for good")
    await dialog.get_by_role("button", name="Keep it").click()
    await expect(dialog).to_be_hidden()
    rows = await relay.sql("SELECT status FROM recordings WHERE id = $1", item["id"])
    assert rows[0]["status"] == "ready"
    await delete.click()
    await dialog.get_by_role("button", name="Delete recording").click()
    await expect(rec).to_contain_text("deleted", timeout=LISTED_WITHIN_MS)
    await expect(rec.get_by_role("button")).to_have_count(0)
    await expect(rec.get_by_role("link")).to_have_count(0)
    rows = await relay.sql("SELECT status FROM recordings WHERE id = $1", item["id"])
    assert rows[0]["status"] == "deleted"
    # Still inert after the list refreshed from the relay.
    await page.reload()
    await expect(rec).to_contain_text("deleted", timeout=LISTED_WITHIN_MS)
    await expect(rec.get_by_role("button")).to_have_count(0)
    assert errors == []
    assert failed == []


async def test_api_keys_sign_in_as_the_operator_token_does(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """An admin key manages (no Live view: /api/stats is the operator's); a read key
    lists and plays, shows the e-mails as the API gives them, and has nothing to press."""
    relay = await make_relay()
    admin = await create_key(relay, "admin", name="team")
    read = await create_key(relay, "read", name="reports")
    await create_interview(relay, candidate={"email": "ana@example.test"})
    errors = collect_page_errors(page)
    failed = collect_failed_responses(page)
    stats_calls: list[str] = []
    page.on("request", lambda r: stats_calls.append(r.url) if "/api/stats" in r.url else None)

    await page.goto(str(relay.client.make_url("/stats")))
    await assert_accessible(page, "the sign-in form")
    await page.get_by_label("Operator token or API key").fill(admin)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/stats$"))
    await expect(page.locator("#role")).to_have_text("Signed in with an admin key")
    await expect(page.get_by_role("link", name="Live")).to_be_hidden()
    await expect(page.locator("#view-interviews")).to_be_visible()
    row = page.locator("#interviews tbody tr").first
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)
    await expect(
        row.get_by_role("button", name="Cancel the interview with ana@example.test")
    ).to_be_visible()
    await expect(page.get_by_text("New interview")).to_be_visible()
    # Cancel asks; "Keep it" keeps it; confirmed, the interview is cancelled.
    cancel = row.get_by_role("button", name="Cancel the interview with ana@example.test")
    await cancel.click()
    dialog = page.get_by_role("dialog", name="Cancel this interview?")
    await expect(dialog).to_contain_text("its link stops working")
    await dialog.get_by_role("button", name="Keep it").click()
    assert [r["status"] for r in await relay.sql("SELECT status FROM interviews")] == ["scheduled"]
    await cancel.click()
    await dialog.get_by_role("button", name="Cancel interview").click()
    await expect(row).to_contain_text("cancelled", timeout=LISTED_WITHIN_MS)
    # Only the erasure is left to press on a cancelled interview.
    await expect(row.get_by_role("button")).to_have_text(["Delete interview…", "Delete candidate…"])
    assert [r["status"] for r in await relay.sql("SELECT status FROM interviews")] == ["cancelled"]
    await create_interview(relay, candidate={"email": "ana@example.test"})
    # Asked for Live by address: the key has none, Interviews instead.
    await page.goto(str(relay.client.make_url("/stats#/live")))
    await expect(page.locator("#view-interviews")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Operator token or API key")).to_be_focused()
    assert await page.evaluate("sessionStorage.length") == 0

    await page.goto(str(relay.client.make_url(f"/stats#token={read}")))
    await expect(page.locator("#role")).to_have_text("Signed in with a read key")
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)
    await expect(row).to_contain_text("scheduled")
    await expect(page.locator("#read-only-note")).to_be_visible()
    await expect(page.get_by_text("New interview")).to_be_hidden()
    await expect(row.get_by_role("button")).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    await assert_accessible(page, "the interviews view of a read key")
    assert stats_calls == []
    assert errors == []
    assert failed == []


async def test_a_refused_key_signs_out_and_shows_nothing(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    key = await create_key(relay, "admin", name="to-revoke")
    await create_interview(relay, candidate={"email": "ana@example.test"})
    errors = collect_page_errors(page)
    await page.goto(str(relay.client.make_url(f"/stats#token={key}")))
    row = page.locator("#interviews tbody tr").first
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)
    # Revoked meanwhile: the next refresh is refused, and the page shows nothing more.
    status, keys, _ = await call(relay, "GET", "/api/keys")
    assert status == 200
    [revoked] = [k for k in keys["items"] if k["name"] == "to-revoke"]
    assert (await call(relay, "DELETE", f"/api/keys/{revoked['id']}"))[0] == 200
    await expect(page.locator("#error")).to_contain_text(
        "The token was refused.", timeout=LISTED_WITHIN_MS
    )
    await expect(page.locator("#interviews tbody tr")).to_have_count(0)
    await expect(page.locator("#view-interviews")).to_be_hidden()
    assert "ana@example.test" not in await page.content()
    assert await page.evaluate("sessionStorage.length") == 0
    # 401 answers are logged by Chromium as failed resources; nothing else may fail.
    assert [e for e in errors if "401" not in e] == []


async def test_lists_page_with_the_apis_cursors_and_keep_what_is_shown(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    for n in range(PAGE + 5):
        await create_interview(relay, candidate={"email": f"c{n:02d}@example.test"})
    errors = collect_page_errors(page)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    await page.get_by_role("link", name="Interviews").click()
    rows = page.locator("#interviews tbody tr")
    await expect(rows).to_have_count(PAGE)
    # Newest first: the last one created heads the list.
    await expect(rows.first).to_contain_text(f"c{PAGE + 4:02d}@example.test")
    more = page.get_by_role("button", name="Show more")
    await more.click()
    await expect(rows).to_have_count(PAGE + 5)
    await expect(more).to_be_hidden()
    await expect(rows.last).to_contain_text("c00@example.test")
    shown = await rows.evaluate_all("rs => rs.map((r) => r.dataset.interview)")
    assert len(set(shown)) == PAGE + 5
    # A new one arrives: the next refresh puts it on top and keeps every row already shown.
    await create_interview(relay, candidate={"email": "late@example.test"})
    await expect(rows.first).to_contain_text("late@example.test", timeout=LISTED_WITHIN_MS)
    await expect(rows).to_have_count(PAGE + 6)
    assert errors == []


async def test_new_link_asks_first_shows_the_new_link_once_and_the_old_one_stops(
    make_relay: MakeRelay, page: Page
) -> None:
    relay = await make_relay()
    admin = await create_key(relay, "admin", name="team")
    interview = await create_interview(relay, candidate={"email": "ana@example.test"})
    old = invite_of(interview)
    errors = collect_page_errors(page)
    failed = collect_failed_responses(page)

    await page.goto(str(relay.client.make_url(f"/stats#token={admin}")))
    await expect(page.locator("#role")).to_have_text("Signed in with an admin key")
    row = page.locator("#interviews tbody tr").first
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)
    renew = row.get_by_role("button", name="New link for ana@example.test")
    # It asks, and says what happens to the old link; "Keep it" changes nothing.
    await renew.click()
    dialog = page.get_by_role("dialog", name="Make a new candidate link?")
    await expect(dialog).to_contain_text("stops working at once")
    await dialog.get_by_role("button", name="Keep it").click()
    await expect(renew).to_be_focused()
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(old), json=NOTICE_CONFIRMED
    )
    assert status == 201, body

    await renew.click()
    await dialog.get_by_role("button", name="Make new link").click()
    shown = page.locator("#created")
    await expect(shown).to_be_focused()
    await expect(page.locator("#created-title")).to_have_text("New candidate link")
    await expect(page.locator("#created-for")).to_contain_text("ana@example.test")
    url = await page.locator("#created-link").input_value()
    assert url.startswith(str(relay.client.make_url("/")) + "#invite=ri_"), url
    new = url.split("#invite=", 1)[1]
    assert new != old
    # Copy link on its row carries the new link (kept in this tab, as a created one).
    copy = row.get_by_role("button", name="Copy link for ana@example.test")
    await expect(copy).to_have_attribute("data-link", url, timeout=LISTED_WITHIN_MS)
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(old), json=NOTICE_CONFIRMED
    )
    assert status == 401 and body["error"]["code"] == "invalid_token", body
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(new), json=NOTICE_CONFIRMED
    )
    assert status == 201, body
    await assert_accessible(page, "the interviews view with a new link")
    assert errors == []
    assert failed == []


async def test_the_keyboard_focus_is_seen_in_the_console(make_relay: MakeRelay, page: Page) -> None:
    """Every control the keyboard reaches, from the sign-in to the interviews view, shows a
    ring that stands out from what is behind it (3:1, WCAG 1.4.11)."""
    relay = await make_relay()
    await create_interview(relay, candidate={"email": "ana@example.test"})
    await page.goto(str(relay.client.make_url("/stats")))
    await page.get_by_label("Operator token or API key").focus()
    await assert_focus_ring_seen(page, "the token field")
    await page.keyboard.type(OPERATOR_TOKEN)
    await page.keyboard.press("Tab")
    await assert_focus_ring_seen(page, "Sign in")
    await page.keyboard.press("Enter")
    await page.goto(str(relay.client.make_url("/stats#/interviews")))
    row = page.locator("#interviews tbody tr").first
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)
    # From the navigation to the last row's buttons, as the keyboard goes.
    await page.locator("#nav-live").focus()
    seen: list[str] = []
    while not seen or not seen[-1].startswith("button# Cancel"):
        assert len(seen) < 15, seen
        await page.keyboard.press("Tab")
        where = await page.evaluate(
            "(() => { const el = document.activeElement; return "
            "`${el.tagName.toLowerCase()}#${el.id} ${el.textContent.trim().slice(0, 20)}`; })()"
        )
        seen.append(where)
        await assert_focus_ring_seen(page, where)


async def test_a_list_that_keeps_failing_to_refresh_says_so_once(
    make_relay: MakeRelay, page: Page
) -> None:
    """The lists refresh every 5 s: while the relay keeps failing them, the error (an alert,
    read out by a screen reader) is said once, not at every refresh; failing again after a
    refresh that worked is said again."""
    relay = await make_relay()
    # The page's clock is the test's: each refresh is its interval's timer, fired by moving
    # the clock on 5 s rather than waited out (six of them took 30 s).
    await page.clock.install()
    await page.add_init_script(RECORD_TEXTS)
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/api/interviews" in r.url else None)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    await page.goto(str(relay.client.make_url("/stats#/interviews")))
    await expect(page.locator("#interviews-empty")).to_be_visible(timeout=LISTED_WITHIN_MS)

    async def interviews_fail(route: Route) -> None:
        body = {"error": {"code": "test", "message": "Down for the test."}, "request_id": "req_x"}
        await route.fulfill(status=503, content_type="application/json", body=json.dumps(body))

    async def refreshed(status: int, what: str) -> None:
        """The list's next refresh, answered ``status``: the clock moved on by its interval
        (one refresh at a time: one still under way makes the timer's call do nothing)."""
        start = len(answers)
        await page.clock.fast_forward(REFRESH_MS)
        await wait_until(lambda: status in answers[start:], 20, what)

    for outage in (1, 2):
        await page.route("**/api/interviews*", interviews_fail)
        await refreshed(503, "a failed refresh")
        await refreshed(503, "another failed refresh")
        texts = await page.evaluate("window.pageTexts")
        alerts = [t["text"] for t in texts if t["live"] == "assertive"]
        assert len(alerts) == outage and "Down for the test." in alerts[-1], alerts
        await page.unroute("**/api/interviews*")
        await refreshed(200, "a refresh that worked")


async def test_delete_interview_and_candidate_ask_first_and_leave_no_row(
    make_relay: MakeRelay, page: Page, artifact_path: Callable[[str], Path]
) -> None:
    """Erasure from the Interviews view (DELETE /api/interviews/{id}, DELETE /api/users/{id}):
    each asks first and says what goes for good; after the 204 its rows leave the list, and
    the relay's rows are gone. A failed one is said with the relay's reference."""
    relay = await make_relay()
    admin = await create_key(relay, "admin", name="team")
    ben = await create_interview(relay, candidate={"email": "ben@example.test"})
    for _ in range(2):
        await create_interview(relay, candidate={"email": "ana@example.test", "name": "Ana"})
    errors = collect_page_errors(page)
    deletes: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: deletes.append((r.status, r.url)) if r.request.method == "DELETE" else None,
    )
    await page.set_viewport_size(DESKTOP)
    await page.goto(str(relay.client.make_url(f"/stats#token={admin}")))
    rows = page.locator("#interviews tbody tr")
    await expect(rows).to_have_count(3, timeout=LISTED_WITHIN_MS)
    ben_row = page.locator(f'#interviews tr[data-interview="{ben["id"]}"]')
    await assert_accessible(page, "the interviews view with its Delete actions")

    # One interview: it asks, and "Keep it" keeps it.
    delete = ben_row.get_by_role("button", name="Delete interview with ben@example.test")
    await delete.click()
    dialog = page.get_by_role("dialog", name="Delete this interview?")
    await expect(dialog).to_contain_text("deleted for good")
    await expect(dialog).to_contain_text("its recordings (audio and transcripts)")
    await expect(dialog).to_contain_text("ben@example.test")
    await assert_accessible(page, "the Delete interview dialog")
    await dialog.get_by_role("button", name="Keep it").click()
    await expect(dialog).to_be_hidden()
    await expect(delete).to_be_focused()
    assert len(await relay.sql("SELECT id FROM interviews")) == 3
    assert deletes == []
    await delete.click()
    await dialog.get_by_role("button", name="Delete interview").click()
    await expect(ben_row).to_have_count(0)
    await expect(rows).to_have_count(2)
    assert [status for status, _ in deletes] == [204], deletes
    assert await relay.sql("SELECT id FROM interviews WHERE id = $1", ben["id"]) == []
    await expect(page.locator("#status")).to_contain_text("ben@example.test is deleted")

    # The candidate: every interview of theirs, said in the dialog, goes with them.
    erase = rows.first.get_by_role(
        "button", name="Delete candidate ana@example.test and all their data"
    )
    await erase.click()
    dialog = page.get_by_role("dialog", name="Delete the candidate and all their data?")
    await expect(dialog).to_contain_text("all 2 of their interviews")
    await expect(dialog).to_contain_text("every recording of theirs (audio and transcripts)")
    await expect(dialog).to_contain_text("deleted for good")
    await screenshots(page, artifact_path, "console-delete-candidate", then=dialog)
    await dialog.get_by_role("button", name="Keep it").click()
    assert len(await relay.sql("SELECT id FROM users WHERE email = 'ana@example.test'")) == 1
    await erase.click()
    await dialog.get_by_role("button", name="Delete candidate and data").click()
    await expect(rows).to_have_count(0)
    await expect(page.locator("#interviews-empty")).to_be_visible()
    assert [status for status, _ in deletes] == [204, 204], deletes
    assert "/api/users/" in deletes[-1][1]
    assert await relay.sql("SELECT id FROM interviews") == []
    assert await relay.sql("SELECT id FROM users WHERE email = 'ana@example.test'") == []
    # The relay's lists agree: nothing comes back.
    await page.reload()
    await expect(page.locator("#interviews-empty")).to_be_visible(timeout=LISTED_WITHIN_MS)

    # Refused (503 here): said in the error line with the reference; the row stays.
    cy = await create_interview(relay, candidate={"email": "cy@example.test"})
    cy_row = page.locator(f'#interviews tr[data-interview="{cy["id"]}"]')
    await expect(cy_row).to_be_visible(timeout=LISTED_WITHIN_MS)

    async def unavailable(route: Route) -> None:
        body = {
            "error": {"code": "database_unavailable", "message": "Try again.", "retryable": True},
            "request_id": "req_erase503",
        }
        await route.fulfill(status=503, content_type="application/json", body=json.dumps(body))

    await page.route(f"**/api/interviews/{cy['id']}", unavailable)
    await cy_row.get_by_role("button", name="Delete interview with cy@example.test").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete interview").click()
    error = page.locator("#error")
    await expect(error).to_contain_text("Could not delete the interview with cy@example.test")
    await expect(error).to_contain_text("(reference req_erase503)")
    await expect(cy_row).to_be_visible()
    assert len(await relay.sql("SELECT id FROM interviews WHERE id = $1", cy["id"])) == 1
    # Chromium logs the 503 as a failed resource; nothing else may fail.
    assert [e for e in errors if "503" not in e] == []


async def test_a_refresh_error_goes_when_the_list_recovers_and_an_action_error_stays(
    make_relay: MakeRelay, page: Page
) -> None:
    """A list's refresh failing is said on its own line, which the next refresh that works
    clears; a failed action (Cancel here) is said on the other, which no refresh clears."""
    relay = await make_relay()
    await create_interview(relay, candidate={"email": "ana@example.test"})
    answers: list[int] = []

    def is_list(url: str) -> bool:
        return "/api/interviews?" in url

    page.on("response", lambda r: answers.append(r.status) if is_list(r.url) else None)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    await page.goto(str(relay.client.make_url("/stats#/interviews")))
    row = page.locator("#interviews tbody tr").first
    await expect(row).to_contain_text("ana@example.test", timeout=LISTED_WITHIN_MS)

    def failing(code: str, request_id: str) -> Callable[[Route], Any]:
        async def answer(route: Route) -> None:
            body = {"error": {"code": code, "message": "Down for the test."}}
            await route.fulfill(
                status=503,
                content_type="application/json",
                body=json.dumps({**body, "request_id": request_id}),
            )

        return answer

    # An action fails: said with its reference.
    cancel_fails = failing("database_unavailable", "req_cancel")
    await page.route("**/api/interviews/*/cancel", cancel_fails)
    await row.get_by_role("button", name="Cancel the interview with ana@example.test").click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel interview").click()
    action_error = page.locator("#error")
    await expect(action_error).to_contain_text(
        "Could not cancel the interview with ana@example.test"
    )
    await expect(action_error).to_contain_text("(reference req_cancel)")

    # Then the refreshes fail: said on the refresh line, the action's failure still there.
    list_fails = failing("test", "req_list")
    await page.route(is_list, list_fails)
    refresh_error = page.locator("#refresh-error")
    await expect(refresh_error).to_contain_text(
        "Could not refresh the interviews: Down for the test. (reference req_list)",
        timeout=LISTED_WITHIN_MS,
    )
    await expect(action_error).to_contain_text("(reference req_cancel)")

    # The relay answers again: the refresh's failure goes at the next refresh, the
    # action's stays until the operator acts or leaves the view.
    await page.unroute(is_list, list_fails)
    start = len(answers)
    await wait_until(lambda: 200 in answers[start:], 20, "a refresh that worked")
    await expect(refresh_error).to_be_hidden()
    await expect(action_error).to_be_visible()
    await expect(action_error).to_contain_text("(reference req_cancel)")
    # Leaving the view clears both.
    await page.get_by_role("link", name="Sessions").click()
    await expect(action_error).to_be_hidden()
    await expect(refresh_error).to_be_hidden()


async def test_delete_interview_on_its_recordings_page_takes_its_files_and_rows(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The recording's page shows its interview: Delete interview there (not for a read key)
    asks, and after the 204 nothing of the recording is on screen, and the relay has neither
    its files nor its rows (no session was live: the request finished the erasure)."""
    relay = await make_relay()
    interview = await create_interview(relay, candidate={"email": "dee@example.test"})
    async with join(relay, invite_of(interview)) as joined:
        sid = joined.session_id
        assert (await call(relay, "DELETE", f"/api/sessions/{sid}"))[0] == 204
    item = await wait_recording(relay, sid, "ready")
    [stored] = await relay.sql("SELECT location FROM recordings WHERE id = $1", item["id"])
    files = Path(stored["location"])
    assert await asyncio.to_thread(listing, files) != [], files
    read = await create_key(relay, "read", name="reports")
    errors = collect_page_errors(page)
    failed = collect_failed_responses(page)
    # A read key plays it, and has no Delete.
    await page.goto(str(relay.client.make_url(f"/stats#token={read}")))
    await expect(page.locator("#role")).to_have_text("Signed in with a read key")
    await page.goto(str(relay.client.make_url(f"/stats#/recordings/{item['id']}")))
    await expect(page.locator("#interview-meta")).to_contain_text("dee@example.test")
    await expect(page.locator("#download-audio")).to_be_enabled()
    await expect(page.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    await page.get_by_role("button", name="Sign out").click()

    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    await page.goto(str(relay.client.make_url(f"/stats#/recordings/{item['id']}")))
    await expect(page.locator("#interview-meta")).to_contain_text("dee@example.test")
    await expect(page.locator("#download-audio")).to_be_enabled()
    await assert_accessible(page, "a recording's page with Delete interview")

    await page.get_by_role("button", name="Delete interview…").click()
    dialog = page.get_by_role("dialog", name="Delete this interview?")
    await expect(dialog).to_contain_text("its recordings (audio and transcripts)")
    await dialog.get_by_role("button", name="Delete interview").click()
    await expect(page.locator("#recording-title")).to_have_text("Deleted")
    await expect(page.locator("#recording-subtitle")).to_contain_text("dee@example.test")
    await expect(page.locator("#transcript li")).to_have_count(0)
    await expect(page.locator("#download-audio")).to_be_disabled()
    await expect(page.get_by_role("link", name="← Recordings")).to_be_focused()
    assert await relay.sql("SELECT id FROM interviews") == []
    assert await relay.sql("SELECT id FROM interview_sessions") == []
    assert await relay.sql("SELECT id FROM recordings") == []
    assert await asyncio.to_thread(listing, files) == []
    # The recordings list no longer has it.
    await page.get_by_role("link", name="← Recordings").click()
    await expect(page.locator("#recordings-empty")).to_be_visible(timeout=LISTED_WITHIN_MS)
    assert errors == []
    assert failed == []
