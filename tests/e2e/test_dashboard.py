"""The operator dashboard (/stats) in headless Chromium against a whole relay with one
live bridged interview (a real aiortc "browser" through the relay to the simulator)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.async_api import Page, expect

from relay.cluster.runtime import RELAY_VERSION
from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import collect_page_errors
from tests.integration.conftest import MakeRelay
from tests.integration.live_session import live_session
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN

CHARTS = ("sessions", "admission", "upstream", "cache", "errors", "cpu", "lag")
TOKEN_KEY = "relayOperatorToken"
SHOWS_WITHIN_MS = 5000
# Two polls two seconds apart, with room for a loaded machine.
CHART_WITHIN_MS = 12000
# Column of the instances table with the member's live session count.
LIVE_SESSIONS_COLUMN = 4


async def test_dashboard_shows_the_live_session_draws_charts_and_ends_it(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
) -> None:
    relay = await make_relay()
    errors = collect_page_errors(page)
    async with live_session(relay, email="jane.doe@example.com") as live:
        sid = live.session_id
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))

        # The token left the address bar and lives in sessionStorage only.
        await expect(page).to_have_url(re.compile(r"/stats$"))
        assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == OPERATOR_TOKEN
        assert await page.evaluate("localStorage.length") == 0

        # The live session appears within 5 s, user masked, both legs shown.
        row = page.locator(f'#live tr.session[data-session="{sid}"]')
        await expect(row).to_be_visible(timeout=SHOWS_WITHIN_MS)
        await expect(row).to_contain_text("j***e@example.com")
        await expect(row).to_contain_text("active")
        await expect(row).to_contain_text("browser → relay")
        await expect(page.locator(f'#live tr.leg2[data-session="{sid}"]')).to_contain_text(
            "upstream → relay"
        )
        assert "jane.doe" not in await page.content()

        # Dependencies.
        await expect(page.locator('[data-dep="PostgreSQL"] strong')).to_have_text("up")
        await expect(page.locator('[data-dep="Redis"] strong')).to_have_text("disabled")
        await expect(page.locator('[data-dep="Upstream"] strong')).to_have_text("up")
        await expect(page.locator('[data-dep="Draining"] strong')).to_have_text("no")

        # Every chart has a history and draws it; the live-sessions line is at 1.
        for chart in CHARTS:
            await expect(page.locator(f"#chart-{chart} svg")).to_have_attribute(
                "data-samples", re.compile(r"^([2-9]|[1-9][0-9]+)$"), timeout=CHART_WITHIN_MS
            )
        sessions_line = page.locator("#chart-sessions polyline")
        await expect(sessions_line).to_have_attribute("points", re.compile(r"\S+,\S+ \S+,\S+"))
        await expect(page.locator("#chart-sessions .legend")).to_contain_text("live: 1")
        await expect(page.locator("#chart-admission polyline").first).to_have_attribute(
            "points", re.compile(r"\d")
        )
        # The relay records by default: the recordings section is drawn.
        await expect(page.locator("#recordings-section")).to_be_visible()

        desktop = artifact_path("dashboard-1280.png")
        await page.screenshot(path=str(desktop), full_page=True)
        print(f"dashboard screenshot: {desktop}")

        # A phone: the page itself does not scroll sideways (tables scroll in their box).
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(row).to_be_visible()
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, overflow
        phone = artifact_path("dashboard-phone.png")
        await page.screenshot(path=str(phone), full_page=True)
        print(f"dashboard screenshot (phone): {phone}")
        await page.set_viewport_size({"width": 1280, "height": 900})

        # End, with the keyboard: the server ends the session.
        end = page.get_by_role("button", name=f"End session {sid}")
        await end.focus()
        await page.keyboard.press("Enter")
        await wait_until(lambda: relay.services.registry.get(sid) is None, 10, "session ended")
        ended = page.locator(f'#ended tr[data-session="{sid}"]')
        await expect(ended).to_contain_text("operator_hangup", timeout=SHOWS_WITHIN_MS)
        await expect(row).to_have_count(0)
        rows = await relay.sql(
            "SELECT state, end_reason FROM interview_sessions WHERE id = $1", sid
        )
        assert [tuple(r) for r in rows] == [("ended", "operator_hangup")]

    assert errors == []


async def test_a_wrong_token_shows_a_clear_message_and_no_data(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    errors = collect_page_errors(page)
    # A session exists, so there would be data to show.
    token = await relay.add_user(email="someone@example.com")
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    sid = body["session_id"]

    await page.goto(str(relay.client.make_url("/stats#token=not-the-operator-token")))
    error = page.locator("#error")
    await expect(error).to_contain_text("The operator token was refused.")
    await expect(page.locator("#dashboard")).to_be_hidden()
    await expect(page).to_have_url(re.compile(r"/stats$"))
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    # Typed in: the same refusal, and still no data anywhere on the page.
    await page.fill("#op-token", "also-wrong")
    await page.press("#op-token", "Enter")
    await expect(error).to_contain_text("The operator token was refused.")
    await expect(page.locator("#live tbody tr")).to_have_count(0)
    assert sid not in await page.content()
    assert "s***e@example.com" not in await page.content()

    # The right token then shows the session.
    await page.fill("#op-token", OPERATOR_TOKEN)
    await page.press("#op-token", "Enter")
    await expect(page.locator(f'#live tr.session[data-session="{sid}"]')).to_be_visible(
        timeout=SHOWS_WITHIN_MS
    )
    await expect(error).to_be_hidden()
    # 401 responses are logged by Chromium as failed resources; nothing else may fail.
    assert [e for e in errors if "401" not in e] == []


async def test_recordings_render_only_when_the_stats_carry_them(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The hook the recorder plugs into: ``Services.recordings_summary``. Its audio and
    transcript routes belong to the recorder; here only the list and its controls."""
    relay = await make_relay()
    errors = collect_page_errors(page)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    await expect(page.locator('[data-dep="PostgreSQL"] strong')).to_have_text("up")
    # The relay records (on by default) but has no recordings yet.
    await expect(page.locator("#recordings")).to_contain_text("No recordings.")

    async def recordings() -> dict[str, object]:
        return {
            "latest": [
                {
                    "id": "rec_1",
                    "session_id": "is_abc",
                    "status": "ready",
                    "duration_s": 61.5,
                    "bytes": 480_000,
                    "created_at": "2026-01-01T00:00:00Z",
                }
            ]
        }

    relay.services.recordings_summary = recordings
    item = page.locator('#recordings li[data-recording="rec_1"]')
    await expect(item).to_be_visible(timeout=SHOWS_WITHIN_MS)
    await expect(item).to_contain_text("is_abc · ready · 1 min 2 s · 480 kB")
    await expect(item.locator("audio")).to_have_count(1)
    for name in ("Load audio", "Transcript", "Delete"):
        await expect(item.get_by_role("button", name=name)).to_be_enabled()

    async def none() -> dict[str, object]:
        return {"latest": []}

    relay.services.recordings_summary = none
    await expect(item).to_have_count(0, timeout=SHOWS_WITHIN_MS)
    await expect(page.locator("#recordings")).to_contain_text("No recordings.")
    assert errors == []


async def test_upstream_shows_degraded_then_down(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The dashboard names the upstream's real state (relay/upstream/health.py): one
    failure is a warning (degraded), a red readiness is down."""
    relay = await make_relay(
        overrides={
            "upstream": {"mint_retries": 0, "ready_failure_threshold": 2},
            "limits": {"per_user_requests_per_minute": 100},
        }
    )
    token = await relay.add_user()
    errors = collect_page_errors(page)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    upstream = page.locator('[data-dep="Upstream"]')
    await expect(upstream.locator("strong")).to_have_text("unknown", timeout=SHOWS_WITHIN_MS)

    await simulator.state.update_faults(
        {"mint": {"status": 500, "code": "server_error", "retry_after_s": 0.01}}
    )
    assert (await relay.create_session(token))[0] == 502
    await expect(upstream.locator("strong")).to_have_text("degraded", timeout=SHOWS_WITHIN_MS)
    await expect(upstream).to_have_class(re.compile(r"\bwarn\b"))
    assert (await relay.create_session(token))[0] == 502
    await expect(upstream.locator("strong")).to_have_text("down", timeout=SHOWS_WITHIN_MS)
    await expect(upstream).to_have_class(re.compile(r"\bbad\b"))
    assert errors == []


async def test_cluster_mode_lists_this_instance_and_ends_its_session(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
) -> None:
    """One relay is a one-member cluster: the cluster mode (chosen with the keyboard,
    remembered across a reload) lists it and its live session, and ends the session."""
    relay = await make_relay()
    member = relay.services.instance_id
    errors = collect_page_errors(page)
    async with live_session(relay, email="jane.doe@example.com") as live:
        sid = live.session_id
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
        # The instance mode is the default and unchanged.
        await expect(page.locator("#scope-instance")).to_be_checked()
        await expect(page.locator(f'#live tr.session[data-session="{sid}"]')).to_be_visible(
            timeout=SHOWS_WITHIN_MS
        )

        # Arrow keys in the radio group switch to the whole cluster.
        await page.focus("#scope-instance")
        await page.keyboard.press("ArrowRight")
        await expect(page.locator("#scope-cluster")).to_be_checked()
        instance_row = page.locator(f'#instances tr[data-member="{member}"]')
        await expect(instance_row).to_be_visible(timeout=SHOWS_WITHIN_MS)
        await expect(instance_row).to_contain_text(RELAY_VERSION)
        await expect(instance_row).to_contain_text("this page")
        await expect(instance_row.locator("td").nth(LIVE_SESSIONS_COLUMN)).to_have_text("1")
        await expect(instance_row).to_contain_text(re.compile(r"\d+(\.\d+)? s ago"))
        row = page.locator(f'#cluster-sessions tr[data-session="{sid}"]')
        await expect(row).to_be_visible(timeout=SHOWS_WITHIN_MS)
        await expect(row).to_contain_text(member)
        await expect(row).to_contain_text("active")
        await expect(row).to_contain_text("j***e@example.com")
        assert "jane.doe" not in await page.content()
        # The per-instance panels are hidden in cluster mode.
        for panel in ("#charts", "#health", "#live", "#ended"):
            await expect(page.locator(panel)).to_be_hidden()
        await expect(page.locator("#status")).to_contain_text("Cluster · 1 instance")

        # Remembered in sessionStorage only, and across a reload.
        assert await page.evaluate("sessionStorage.getItem('relayDashboardScope')") == "cluster"
        assert await page.evaluate("localStorage.length") == 0
        await page.reload()
        await expect(page.locator("#scope-cluster")).to_be_checked()
        await expect(row).to_be_visible(timeout=SHOWS_WITHIN_MS)
        shot = artifact_path("dashboard-cluster-1280.png")
        await page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot (cluster): {shot}")

        # End from the cluster table, with the keyboard: the server ends the session.
        end = page.locator("#cluster-sessions").get_by_role("button", name=f"End session {sid}")
        await end.focus()
        await page.keyboard.press("Enter")
        await wait_until(lambda: relay.services.registry.get(sid) is None, 10, "session ended")
        await expect(row).to_have_count(0, timeout=SHOWS_WITHIN_MS)
        await expect(instance_row.locator("td").nth(LIVE_SESSIONS_COLUMN)).to_have_text("0")
        rows = await relay.sql(
            "SELECT state, end_reason FROM interview_sessions WHERE id = $1", sid
        )
        assert [tuple(r) for r in rows] == [("ended", "operator_hangup")]

        # Back to this instance: its panels return, the end is in "Recently ended".
        await page.focus("#scope-cluster")
        await page.keyboard.press("ArrowLeft")
        await expect(page.locator("#scope-instance")).to_be_checked()
        await expect(page.locator("#cluster-view")).to_be_hidden()
        await expect(page.locator(f'#ended tr[data-session="{sid}"]')).to_contain_text(
            "operator_hangup", timeout=SHOWS_WITHIN_MS
        )
        await expect(page.locator("#chart-sessions")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('relayDashboardScope')") == "instance"

    assert errors == []


async def test_cluster_mode_on_one_member_ends_a_session_held_by_another(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """Two relays on one PostgreSQL: A's dashboard lists both, shows B's live interview,
    and its End reaches B, which holds the media."""
    a = await make_relay(instance_id="member-a")
    b = await make_relay(instance_id="member-b")
    errors = collect_page_errors(page)
    async with live_session(b, email="jane.doe@example.com") as live:
        sid = live.session_id
        await page.goto(str(a.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
        await page.get_by_label("Whole cluster").check()

        for member, live_count in (("member-a", "0"), ("member-b", "1")):
            member_row = page.locator(f'#instances tr[data-member="{member}"]')
            await expect(member_row).to_be_visible(timeout=SHOWS_WITHIN_MS)
            await expect(member_row.locator("td").nth(LIVE_SESSIONS_COLUMN)).to_have_text(
                live_count, timeout=SHOWS_WITHIN_MS
            )
        await expect(page.locator('#instances tr[data-member="member-a"]')).to_contain_text(
            "this page"
        )
        await expect(page.locator('#instances tr[data-member="member-b"]')).not_to_contain_text(
            "this page"
        )
        row = page.locator(f'#cluster-sessions tr[data-session="{sid}"]')
        await expect(row).to_be_visible(timeout=SHOWS_WITHIN_MS)
        await expect(row).to_have_attribute("data-member", "member-b")
        await expect(row).to_contain_text("j***e@example.com")
        await expect(page.locator("#status")).to_contain_text(
            "Cluster · 2 instances · 1 live session · via member-a"
        )

        await row.get_by_role("button", name=f"End session {sid}").click()
        await wait_until(lambda: b.services.registry.get(sid) is None, 10, "ended on B")
        await expect(row).to_have_count(0, timeout=SHOWS_WITHIN_MS)
        rows = await a.sql("SELECT state, end_reason FROM interview_sessions WHERE id = $1", sid)
        assert [tuple(r) for r in rows] == [("ended", "operator_hangup")]

    assert errors == []
