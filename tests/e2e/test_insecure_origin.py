"""The candidate page on an insecure origin: browsers give the microphone only to secure
pages (https://, or localhost), so opened over plain http:// under a real host name the
page must say so in plain words, not fail later with a raw getUserMedia error.

Chromium counts every 127.0.0.0/8 address and "localhost" as potentially trustworthy, so
the page is loaded under a host name (mapped to the relay's loopback address by Chromium's
own resolver rules): an ordinary http:// origin, with no traffic leaving loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.conftest import CHROMIUM, chromium_args
from tests.integration.conftest import MakeRelay

HOST_NAME = "interviews.example"


@pytest.fixture
async def named_host_browser(fake_mic_wav: Path) -> AsyncIterator[Browser]:
    args = [*chromium_args(fake_mic_wav), f"--host-resolver-rules=MAP {HOST_NAME} 127.0.0.1"]
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = await (await browser.new_context()).new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(url)
    return page, requests


async def test_an_insecure_origin_is_explained_and_nothing_starts(
    make_relay: MakeRelay, named_host_browser: Browser, artifact_path: Callable[[str], Path]
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    port = relay.client.make_url("/").port
    page, requests = await open_page(
        named_host_browser, f"http://{HOST_NAME}:{port}/#token={token}"
    )
    assert await page.evaluate("window.isSecureContext") is False
    assert await page.evaluate("navigator.mediaDevices === undefined") is True

    problem = page.locator("#mic-problem")
    await expect(problem).to_be_visible()
    await expect(problem).to_have_attribute("data-code", "insecure")
    await expect(problem).to_contain_text("This link must start with https://")
    await expect(problem).to_contain_text("insecure connection")
    await expect(page.locator("#start")).to_be_disabled()
    await expect(page.locator("#check")).to_be_disabled()
    await expect(page.locator("#token")).to_be_hidden()
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.screenshot(path=str(artifact_path("page-preflight-insecure.png")), full_page=True)
    # Even if Start is clicked somehow, no session is created for nothing.
    await page.evaluate(
        "const start = document.getElementById('start'); start.disabled = false; start.click()"
    )
    await expect(problem).to_contain_text("https://")
    await expect(page.locator("#preflight")).to_be_visible()
    assert not any("/api/realtime-session" in url for url in requests), requests
    assert await relay.sql("SELECT id FROM interview_sessions") == []


async def test_the_same_page_on_loopback_is_a_secure_context(
    make_relay: MakeRelay, named_host_browser: Browser
) -> None:
    """The control: on 127.0.0.1 (potentially trustworthy) the microphone is there."""
    relay = await make_relay()
    page, _ = await open_page(named_host_browser, str(relay.client.make_url("/")))
    assert await page.evaluate("window.isSecureContext") is True
    assert await page.evaluate("typeof navigator.mediaDevices.getUserMedia") == "function"
    await expect(page.locator("#mic-problem")).to_be_hidden()
    await expect(page.locator("#start")).to_be_enabled()
