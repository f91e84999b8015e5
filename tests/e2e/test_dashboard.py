"""The console's Live view (/stats with the operator token) in headless Chromium against a
whole relay with one live bridged interview (a real aiortc "browser" through the relay to
the simulator)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from playwright.async_api import Page, Route, expect

from relay.cluster.runtime import RELAY_VERSION
from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import RECORD_TEXTS, collect_page_errors
from tests.e2e.console_helpers import DESKTOP, assert_accessible, collect_failed_responses
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
    failed = collect_failed_responses(page)
    icons: list[int] = []
    page.on("response", lambda r: icons.append(r.status) if "favicon" in r.url else None)
    async with live_session(relay, email="jane.doe@example.com") as live:
        sid = live.session_id
        await page.set_viewport_size(DESKTOP)
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
        await assert_accessible(page, "the live view")

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
        await page.set_viewport_size(DESKTOP)

        # End is on screen at 1280 px (the table's last column stays in view).
        end = page.get_by_role("button", name=f"End session {sid}")
        await expect(end).to_be_in_viewport()
        # Read from the button as it is now: the page redraws its table every 2 s, and a
        # handle taken before a redraw would measure nothing.
        right = await end.evaluate("(e) => e.getBoundingClientRect().right")
        assert right <= DESKTOP["width"], right

        # End, with the keyboard, asks first; Escape keeps the session.
        await end.focus()
        await page.keyboard.press("Enter")
        confirm = page.get_by_role("dialog", name="End this session?")
        await expect(confirm).to_contain_text(sid)
        await page.keyboard.press("Escape")
        await expect(confirm).to_be_hidden()
        assert relay.services.registry.get(sid) is not None
        await expect(row).to_be_visible()
        # Asked again and confirmed: the server ends the session.
        await end.focus()
        await page.keyboard.press("Enter")
        await confirm.get_by_role("button", name="End session").press("Enter")
        await wait_until(lambda: relay.services.registry.get(sid) is None, 10, "session ended")
        ended = page.locator(f'#ended tr[data-session="{sid}"]')
        await expect(ended).to_contain_text("operator_hangup", timeout=SHOWS_WITHIN_MS)
        await expect(row).to_have_count(0)
        await relay.wait_session_closed(sid)
        rows = await relay.sql(
            "SELECT state, end_reason FROM interview_sessions WHERE id = $1", sid
        )
        assert [tuple(r) for r in rows] == [("ended", "operator_hangup")]

    assert errors == []
    # Not even a favicon missing: the page names its own, and it is there.
    assert failed == []
    assert icons == [200]


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
    await expect(error).to_contain_text("The token was refused.")
    await expect(page.locator("#dashboard")).to_be_hidden()
    await expect(page).to_have_url(re.compile(r"/stats$"))
    assert await page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None

    # Typed in: the same refusal, and still no data anywhere on the page.
    await page.fill("#op-token", "also-wrong")
    await page.press("#op-token", "Enter")
    await expect(error).to_contain_text("The token was refused.")
    await expect(page.locator("#live tbody tr")).to_have_count(0)
    await assert_accessible(page, "the refused sign-in")
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
        await page.set_viewport_size(DESKTOP)
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

        # End from the cluster table, with the keyboard, confirmed: the server ends it.
        end = page.locator("#cluster-sessions").get_by_role("button", name=f"End session {sid}")
        await expect(end).to_be_in_viewport()
        await end.focus()
        await page.keyboard.press("Enter")
        await page.get_by_role("dialog").get_by_role("button", name="End session").click()
        await wait_until(lambda: relay.services.registry.get(sid) is None, 10, "session ended")
        await expect(row).to_have_count(0, timeout=SHOWS_WITHIN_MS)
        await expect(instance_row.locator("td").nth(LIVE_SESSIONS_COLUMN)).to_have_text("0")
        await relay.wait_session_closed(sid)
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
        await page.get_by_role("dialog").get_by_role("button", name="End session").click()
        await wait_until(lambda: b.services.registry.get(sid) is None, 10, "ended on B")
        await expect(row).to_have_count(0, timeout=SHOWS_WITHIN_MS)
        await a.wait_session_closed(sid)
        rows = await a.sql("SELECT state, end_reason FROM interview_sessions WHERE id = $1", sid)
        assert [tuple(r) for r in rows] == [("ended", "operator_hangup")]

    assert errors == []


async def test_the_live_view_is_not_read_out_at_every_refresh(
    make_relay: MakeRelay, page: Page
) -> None:
    """The Live view refreshes every 2 s. Its status line (a live region) is read out when
    it says something new, not at each refresh: the refresh time is shown beside it, out of
    the region. A refresh failing again and again is said once too (role=alert)."""
    relay = await make_relay()
    await page.add_init_script(RECORD_TEXTS)
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/api/stats" in r.url else None)
    await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
    await expect(page.locator("#status")).to_contain_text("version")
    seen = len(answers)
    await wait_until(lambda: len(answers) >= seen + 3, 15, "three more refreshes")
    texts = await page.evaluate("window.pageTexts")
    said = [t["text"] for t in texts if t["id"] == "status" and t["live"] != "off"]
    after = said[said.index("Loading…") + 1 :]
    assert len(after) == 1 and "version" in after[0], said
    await expect(page.locator("#updated")).to_contain_text("updated")

    async def stats_fail(route: Route) -> None:
        body = {"error": {"code": "test", "message": "Down for the test."}}
        await route.fulfill(status=503, content_type="application/json", body=json.dumps(body))

    await page.route("**/api/stats", stats_fail)
    seen = len(answers)
    await wait_until(lambda: answers[seen:].count(503) >= 3, 15, "three failed refreshes")
    await expect(page.get_by_role("alert")).to_contain_text("Down for the test.")
    texts = await page.evaluate("window.pageTexts")
    alerts = [t["text"] for t in texts if t["live"] == "assertive"]
    assert len(alerts) == 1 and "Down for the test." in alerts[0], alerts
    said = [t["text"] for t in texts if t["id"] == "status" and t["live"] != "off"]
    assert said.count("Stale: the last refresh failed.") == 1, said


async def test_a_failed_end_stays_said_while_the_live_view_refreshes(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The Live view refreshes every 2 s: a refresh that works clears a refresh's failure,
    not a failed End's, which stays (with its reference) until the operator acts again."""
    relay = await make_relay()
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/api/stats" in r.url else None)
    async with live_session(relay, email="jane.doe@example.com") as live:
        sid = live.session_id
        await page.goto(str(relay.client.make_url(f"/stats#token={OPERATOR_TOKEN}")))
        row = page.locator(f'#live tr.session[data-session="{sid}"]')
        await expect(row).to_be_visible(timeout=SHOWS_WITHIN_MS)

        async def refused(route: Route) -> None:
            body = {"error": {"code": "test", "message": "Down for the test."}}
            await route.fulfill(
                status=503,
                content_type="application/json",
                body=json.dumps({**body, "request_id": "req_end503"}),
            )

        await page.route(f"**/api/sessions/{sid}", refused)
        await row.get_by_role("button", name=f"End session {sid}").click()
        await page.get_by_role("dialog").get_by_role("button", name="End session").click()
        error = page.locator("#error")
        await expect(error).to_contain_text(f"Could not end {sid}: Down for the test.")
        await expect(error).to_contain_text("(reference req_end503)")
        seen = len(answers)
        await wait_until(lambda: answers[seen:].count(200) >= 2, 15, "two refreshes that worked")
        await expect(error).to_contain_text("(reference req_end503)")
        await expect(page.locator("#refresh-error")).to_be_hidden()
        assert relay.services.registry.get(sid) is not None
