"""Fixtures for browser tests: headless Chromium (Debian's ``chromium``, driven by
Playwright) with a fake microphone that plays a generated WAV, and the integration
fixtures (``make_relay``, ``simulator``) for a whole relay on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import ARTIFACTS_DIR
from tests.integration.conftest import make_relay, simulator
from tests.integration.media_helpers import SAMPLE_RATE, silence, speech_like

__all__ = [
    "artifact_path",
    "browser",
    "end_interview",
    "fake_mic_wav",
    "make_relay",
    "page",
    "simulator",
]

# axe-core, the accessibility checker the tests inject into the pages (npm, pinned in
# tests/e2e/package.json; tests/run.sh installs it).
AXE_JS = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"

# Never a browser downloaded by Playwright: the system's Chromium.
CHROMIUM = "/usr/bin/chromium"


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.astype("<i2").tobytes())


@pytest.fixture
async def fake_mic_wav(tmp_path: Path) -> Path:
    """About 2 s of speech-like audio then 2 s of silence (48 kHz mono s16): one spoken
    turn that the simulator's VAD closes. Chromium loops the file."""
    path = tmp_path / "fake-mic.wav"
    pcm = np.concatenate([speech_like(2.0), silence(2.0)])
    await asyncio.to_thread(_write_wav, path, pcm)
    return path


def chromium_args(wav: Path, *, grant: bool = True, device: bool = True) -> list[str]:
    """``grant``: getUserMedia is granted without a prompt (without it, headless Chromium
    denies it: nobody answers the prompt). ``device``: a fake microphone playing ``wav``
    (without it there is none: the machine has no sound card)."""
    media = []
    if grant:
        media.append("--use-fake-ui-for-media-stream")
    if device:
        media += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]
    return [
        "--no-sandbox",  # the tests may run as root
        "--disable-gpu",
        *media,
        "--autoplay-policy=no-user-gesture-required",
        # Without it Chromium gathers no ICE candidates when loopback is the only interface.
        "--allow-loopback-in-peer-connection",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--disable-default-apps",
    ]


@contextlib.asynccontextmanager
async def launch_chromium(args: list[str]) -> AsyncIterator[Browser]:
    # TMPDIR points into pytest's temporary directory (tests/conftest.py), where Chromium
    # leaves its profile and singleton files.
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def browser(fake_mic_wav: Path) -> AsyncIterator[Browser]:
    async with launch_chromium(chromium_args(fake_mic_wav)) as chromium:
        yield chromium


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Each phase's report on the test, for the page fixture to see whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)  # noqa: B010
    return report


@pytest.fixture
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    context = await browser.new_context()
    # Everything the page logged, kept for a failure (below).
    console: list[str] = []
    try:
        page = await context.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        yield page
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            await save_failed_page(page, request.node.name, console)
    finally:
        await context.close()


async def save_failed_page(page: Page, test_name: str, console: list[str]) -> None:
    """A failed browser test's page as it was: a screenshot and what the page logged, with
    its status and error lines, under tests/artifacts/ (listed at the end of the run), and
    the lines in the test's output. A test that failed on a timeout says little more than
    what it waited for."""
    name = "failed-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in test_name)
    with contextlib.suppress(Exception):  # the page may be gone: the log still helps
        await page.screenshot(path=artifact_file(f"{name}.png"), full_page=True)
    lines = [f"url: {page.url}"]
    with contextlib.suppress(Exception):
        shown = await page.evaluate(
            """() => ["status", "activity", "error", "connection", "mic-problem"].map((id) => {
                const el = document.getElementById(id);
                return `#${id}: ${el ? JSON.stringify(el.textContent.trim()) : "(none)"}`;
            })"""
        )
        lines += shown
    state = len(lines)
    lines += ["console:", *console]
    await asyncio.to_thread(artifact_file(f"{name}.log").write_text, "\n".join(lines) + "\n")
    # In the run's output too (pytest shows a failed test's teardown output): a CI run
    # keeps its log, not its files. The page's state, then the end of its console.
    print("\n".join(["the page when the test failed:", *lines[:state], *lines[state:][-40:]]))


async def end_interview(page: Page) -> None:
    """The candidate's End, as the page takes it: End, then "End now" in the question it
    asks first ("End the interview? You cannot come back to it.")."""
    await page.click("#stop")
    await page.click("#end-now")


# ---------------------------------------------------------------------- artifacts


@pytest.fixture
def artifact_path() -> Callable[[str], Path]:
    """``artifact_path("name.png")``: a file under tests/artifacts/ (git-ignored), listed
    at the end of the test run (tests/conftest.py)."""
    return artifact_file


def artifact_file(name: str) -> Path:
    """A file under tests/artifacts/ (created), listed at the end of the run."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR / name


# Every text the page puts on screen, as it changes, in window.pageTexts: {id, live, text}.
# `live` is how a screen reader is told of it: the politeness of the live region it is in
# (aria-live, or role status, log or alert), "off" when it is in none (read only when the
# candidate goes there). `id`: the live region's, else the nearest element's with one. An
# alert counts also when it is shown, the text already in it. Changes made together (in one
# task) count once.
RECORD_TEXTS = """
window.pageTexts = [];
const LIVE = '[aria-live], [role="status"], [role="log"], [role="alert"]';
const liveness = (region) => region.getAttribute("aria-live") ||
    (region.getAttribute("role") === "alert" ? "assertive" : "polite");
document.addEventListener("DOMContentLoaded", () => {
    new MutationObserver((mutations) => {
        // One entry per element and batch: an alert filled then shown is one announcement.
        const batch = new Map();
        for (const m of mutations) {
            const el = m.target.nodeType === Node.ELEMENT_NODE ? m.target : m.target.parentElement;
            if (!el) continue;
            const region = el.closest(LIVE);
            const shown = m.type === "attributes";
            if (shown && (el.hidden || !region || liveness(region) !== "assertive")) continue;
            const live = region && region.checkVisibility() ? liveness(region) : "off";
            const text = el.textContent.trim();
            const id = (region || el.closest("[id]") || el).id;
            if (text) batch.set(id, { id, live, text });
        }
        window.pageTexts.push(...batch.values());
    }).observe(document.body, {
        childList: true, characterData: true, subtree: true,
        attributes: true, attributeFilter: ["hidden"],
    });
});
"""


def collect_page_errors(page: Page) -> list[str]:
    """Console errors and uncaught exceptions of ``page`` (CSP violations included)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """What axe-core (its default rules: WCAG 2 A/AA and best practices) finds wrong on the
    page as it is now: ``[{id, impact, help, targets}]``. Injected through the DevTools
    protocol, so the page's Content-Security-Policy (no inline script) stays on."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        if not AXE_JS.exists():
            pytest.fail(f"{AXE_JS} is missing: run `npm ci --prefix tests/e2e` (tests/run.sh does)")
        await page.evaluate(await asyncio.to_thread(AXE_JS.read_text))
    found: list[dict[str, Any]] = await page.evaluate(
        """async () => (await axe.run(document)).violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            targets: v.nodes.map((n) => n.target.join(" ")),
        }))"""
    )
    return found


def describe_violations(found: list[dict[str, Any]]) -> str:
    return json.dumps(found, indent=1)


def _relative_luminance(rgb: list[int]) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: list[int], b: list[int]) -> float:
    """WCAG's contrast ratio of two sRGB colours ([r, g, b], 0-255)."""
    la, lb = sorted((_relative_luminance(a), _relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


async def assert_focus_ring_seen(page: Page, where: str) -> None:
    """What has the keyboard's focus now shows a solid ring (2 px at least) that contrasts
    3:1 at least with the background behind it (WCAG 1.4.11, Non-text Contrast: the ring is
    drawn outside the control, on what is behind it)."""
    ring = await page.evaluate(
        """() => {
            const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
            const el = document.activeElement;
            const style = getComputedStyle(el);
            let behind = el.parentElement;
            while (behind && getComputedStyle(behind).backgroundColor === "rgba(0, 0, 0, 0)") {
                behind = behind.parentElement;
            }
            return {
                focusVisible: el.matches(":focus-visible"), style: style.outlineStyle,
                width: parseFloat(style.outlineWidth), color: rgb(style.outlineColor),
                behind: behind ? rgb(getComputedStyle(behind).backgroundColor) : [255, 255, 255],
            };
        }"""
    )
    assert ring["focusVisible"] and ring["style"] == "solid" and ring["width"] >= 2, (where, ring)
    ratio = contrast_ratio(ring["color"], ring["behind"])
    assert ratio >= 3, f"{where}: focus ring {ring['color']} on {ring['behind']}: {ratio:.2f}:1"
