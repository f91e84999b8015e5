"""What the console's browser tests share: accessibility, failed answers, screenshots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.async_api import Locator, Page, ViewportSize, expect

from tests.e2e.conftest import axe_violations, describe_violations

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


def collect_failed_responses(page: Page) -> list[str]:
    """Every answer of 400 or more the page got (a missing favicon would be one)."""
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return failed


async def assert_accessible(page: Page, where: str) -> None:
    found = await axe_violations(page)
    assert found == [], f"{where}: {describe_violations(found)}"


async def no_sideways_scroll(page: Page) -> None:
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, overflow


async def screenshots(
    page: Page, artifact_path: Callable[[str], Path], name: str, *, then: Locator
) -> None:
    """``name``-1280.png and ``name``-phone.png (the page not scrolling sideways on the
    phone), back at 1280 px after."""
    await page.set_viewport_size(DESKTOP)
    await expect(then).to_be_visible()
    await page.screenshot(path=str(artifact_path(f"{name}-1280.png")), full_page=True)
    await page.set_viewport_size(PHONE)
    await expect(then).to_be_visible()
    await no_sideways_scroll(page)
    await page.screenshot(path=str(artifact_path(f"{name}-phone.png")), full_page=True)
    await page.set_viewport_size(DESKTOP)
