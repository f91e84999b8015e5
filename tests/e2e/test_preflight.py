"""The candidate page before Start, in headless Chromium against the whole relay: the
microphone check (permission, device list, level meter) and its guidance when it fails,
the credential from the link (no token field), the practice banner, the favicon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Request, Response, expect

from tests.e2e.conftest import (
    _write_wav,
    chromium_args,
    collect_page_errors,
    end_interview,
    launch_chromium,
)
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import silence

LINK_REFUSED = "This interview link is not valid (or no longer valid)."
# The level meter reads 0..1 over -60..0 dBFS: speech is well above the first bound, the
# fake microphone's silence (and a muted track) well below the second.
SPEECH_LEVEL = 0.4
QUIET_LEVEL = 0.15


async def meter_readings(page: Page, count: int, interval_ms: int = 100) -> list[float]:
    """``count`` readings of the level meter, ``interval_ms`` apart, taken in the page."""
    readings: list[float] = await page.evaluate(
        """([count, interval]) => new Promise((resolve) => {
            const values = [];
            const timer = setInterval(() => {
                values.push(document.getElementById("level").value);
                if (values.length >= count) { clearInterval(timer); resolve(values); }
            }, interval);
        })""",
        [count, interval_ms],
    )
    return readings


def session_requests(page: Page) -> list[Request]:
    seen: list[Request] = []
    page.on(
        "request", lambda r: seen.append(r) if r.url.endswith("/api/realtime-session") else None
    )
    return seen


async def test_the_microphone_check_lists_the_device_and_the_meter_follows_the_voice(
    make_relay: MakeRelay, page: Page, artifact_path: Callable[[str], Path]
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    errors = collect_page_errors(page)
    created = session_requests(page)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")

    # The site may use the microphone already (the fake UI grants it): checked at once.
    mic = page.locator("#mic")
    await expect(mic).to_be_enabled()
    options = await mic.locator("option").all_inner_texts()
    assert "Fake Default Audio Input" in options and "Fake Audio Input 1" in options, options
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await expect(page.locator("#mic-problem")).to_be_hidden()

    # The fake microphone loops 2 s of speech and 2 s of silence: the meter goes up and down.
    readings = await meter_readings(page, 50)
    peak = readings.index(max(readings))
    assert max(readings) > SPEECH_LEVEL, readings
    assert min(readings[peak:] + readings[:peak]) < QUIET_LEVEL, readings
    await page.screenshot(path=str(artifact_path("page-preflight-ready.png")), full_page=True)

    # Another device: opened, remembered for this tab, and the meter moves again.
    other = await mic.locator("option", has_text="Fake Audio Input 1").get_attribute("value")
    assert other
    await page.evaluate(
        """() => {
            const heard = document.getElementById("heard");
            window.heardTexts = [];
            new MutationObserver(() => window.heardTexts.push(heard.textContent))
                .observe(heard, { childList: true, characterData: true, subtree: true });
        }"""
    )
    await mic.select_option(other)
    # Opened again: the check's hint goes through its states once more.
    await page.wait_for_function(
        "() => window.heardTexts.some((t) => t.startsWith('Say a few words'))", timeout=10_000
    )
    assert await page.evaluate("sessionStorage.getItem('interviewMicrophone')") == other
    await expect(mic).to_have_value(other)
    assert max(await meter_readings(page, 50)) > SPEECH_LEVEL
    # Nothing was started by the check.
    assert created == []
    assert errors == []


async def test_a_silent_microphone_leaves_the_meter_still(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    """The control of the test above: the meter shows the microphone's sound, not motion."""
    relay = await make_relay()
    wav = tmp_path / "silent.wav"
    await asyncio.to_thread(_write_wav, wav, silence(4.0))
    async with launch_chromium(chromium_args(wav)) as chromium:
        page = await (await chromium.new_context()).new_page()
        await page.goto(str(relay.client.make_url("/")))
        await expect(page.locator("#mic")).to_be_enabled()
        readings = await meter_readings(page, 30)
        assert max(readings) < QUIET_LEVEL, readings
        await expect(page.locator("#heard")).not_to_have_text("We can hear you.")


async def test_a_denied_microphone_says_how_to_allow_it(
    make_relay: MakeRelay, fake_mic_wav: Path, artifact_path: Callable[[str], Path]
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    # No fake UI: nobody answers the permission prompt of headless Chromium, so it is denied.
    async with launch_chromium(chromium_args(fake_mic_wav, grant=False)) as chromium:
        page = await (await chromium.new_context()).new_page()
        created = session_requests(page)
        await page.set_viewport_size({"width": 1280, "height": 800})
        await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
        await expect(page.locator("#start")).to_be_enabled()
        await page.click("#check")
        problem = page.locator("#mic-problem")
        await expect(problem).to_be_visible()
        await expect(problem).to_have_attribute("data-code", "denied")
        await expect(problem).to_contain_text("The browser is blocking your microphone")
        await expect(page.locator("#mic-problem-steps li").first).to_contain_text(
            "Microphone and choose Allow"
        )
        await expect(page.locator("#heard")).not_to_have_text("We can hear you.")
        await expect(page.locator("#mic")).to_be_disabled()
        await expect(page.locator("#mic option")).to_have_text(["Microphone blocked"])
        await page.screenshot(path=str(artifact_path("page-preflight-denied.png")), full_page=True)

        # Start checks the microphone first: no session is spent on a blocked one.
        await page.click("#start")
        await expect(page.locator("#start")).to_be_enabled()
        await expect(problem).to_have_attribute("data-code", "denied")
        assert created == []
    assert await relay.sql("SELECT id FROM interview_sessions") == []


async def test_no_microphone_at_all_says_to_plug_one_in(
    make_relay: MakeRelay, fake_mic_wav: Path, artifact_path: Callable[[str], Path]
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    # Permission granted, but no fake device: the machine has no sound card.
    async with launch_chromium(chromium_args(fake_mic_wav, device=False)) as chromium:
        page = await (await chromium.new_context()).new_page()
        created = session_requests(page)
        await page.set_viewport_size({"width": 1280, "height": 800})
        await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
        await page.click("#check")
        problem = page.locator("#mic-problem")
        await expect(problem).to_have_attribute("data-code", "no_device")
        await expect(problem).to_contain_text("No microphone was found")
        await expect(problem).to_contain_text("Plug in a headset or a microphone")
        await expect(page.locator("#mic")).to_be_disabled()
        await expect(page.locator("#mic option")).to_have_text(["No microphone found"])
        await page.screenshot(
            path=str(artifact_path("page-preflight-no-device.png")), full_page=True
        )
        await page.click("#start")
        await expect(page.locator("#start")).to_be_enabled()
        assert created == []


@pytest.mark.parametrize(
    ("name", "kind"),
    [("token", "user token"), ("invite", "invite token")],
)
async def test_a_link_with_a_credential_shows_no_token_field(
    make_relay: MakeRelay, page: Page, name: str, kind: str
) -> None:
    relay = await make_relay()
    # An invite token has the form ri_<43 urlsafe>; this one names no interview, so the
    # relay refuses it, and the page says so without offering a field either.
    credential = await relay.add_user(seconds=600) if name == "token" else "ri_" + "A" * 43
    created = session_requests(page)
    notices: list[Request] = []
    page.on("request", lambda r: notices.append(r) if "/api/recording-notice" in r.url else None)
    await page.goto(str(relay.client.make_url("/")) + f"#{name}={credential}")
    await expect(page.locator("#start")).to_be_enabled()
    await expect(page.locator("#token")).to_be_hidden()
    assert name not in page.url and credential not in page.url, page.url
    assert await page.evaluate("sessionStorage.getItem('interviewToken')") == credential
    # A reload keeps it (this tab's sessionStorage): still no field.
    await page.reload()
    await expect(page.locator("#start")).to_be_enabled()
    await expect(page.locator("#token")).to_be_hidden()

    await page.click("#start")
    if name == "token":
        await expect(page.locator("#stop")).to_be_enabled(timeout=10_000)
        await end_interview(page)
        await expect(page.locator("#ended")).to_be_visible()
    else:
        await expect(page.locator("#error")).to_contain_text(LINK_REFUSED)
        await expect(page.locator("#token")).to_be_hidden()
    # The credential went, as the Bearer credential, to the candidate endpoint.
    assert [r.headers["authorization"] for r in created] == [f"Bearer {credential}"], kind
    # The recording notice is asked for with the invite (the relay answers for that
    # interview), and without a user token (it needs none).
    sent = {r.headers.get("authorization") for r in notices}
    assert sent == ({f"Bearer {credential}"} if name == "invite" else {None}), sent


async def test_a_link_opened_over_the_page_takes_its_credential(
    make_relay: MakeRelay, page: Page
) -> None:
    """Opening the link in a tab already showing the page changes only the fragment: no
    new page load, yet the credential is taken (and the field goes)."""
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    await page.goto(str(relay.client.make_url("/")))
    await expect(page.locator("#token")).to_be_visible()
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#token")).to_be_hidden()
    await expect(page.locator("#start")).to_be_enabled()
    assert token not in page.url
    assert await page.evaluate("sessionStorage.getItem('interviewToken')") == token


async def test_the_practice_banner_is_there_before_start(
    make_relay: MakeRelay, page: Page, artifact_path: Callable[[str], Path]
) -> None:
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    created = session_requests(page)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    banner = page.locator("#simulated")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("simulated interviewer")
    await expect(page.locator("#recording-notice")).to_be_visible()
    assert created == []
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await page.screenshot(path=str(artifact_path("page-preflight-practice.png")), full_page=True)


async def test_a_real_upstream_shows_no_practice_banner(make_relay: MakeRelay, page: Page) -> None:
    """The control: the banner follows the relay's answer."""
    relay = await make_relay()
    async with page.expect_response("**/api/recording-notice") as notice:
        await page.goto(str(relay.client.make_url("/")))
    assert (await (await notice.value).json())["simulated"] is False
    await expect(page.locator("#start")).to_be_enabled()
    await expect(page.locator("#simulated")).to_be_hidden()


async def test_the_favicon_is_linked_and_served_and_nothing_is_missing(
    make_relay: MakeRelay, page: Page
) -> None:
    relay = await make_relay()
    failed: list[str] = []

    def check(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page.on("response", check)
    await page.goto(str(relay.client.make_url("/")))
    await expect(page.locator("#start")).to_be_enabled()
    icon = await page.locator('link[rel="icon"]').get_attribute("href")
    assert icon == "/static/favicon.svg"
    async with relay.client.get(icon) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/svg+xml"
        assert (await resp.text()).startswith("<svg")
    # Every module of the page loaded (a missing one would be a 404 here).
    scripts: list[Any] = await page.evaluate(
        "performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert any(s.endswith("/static/page-interview.js") for s in scripts), scripts
    assert failed == []
