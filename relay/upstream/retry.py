"""Retry policy for the upstream mint (pure): what is retryable, how long to wait.

The loop itself lives in the client and is a plain ``while`` rather than the ``backoff``
package (which the database path uses): here the wait depends on the failed *response*
(``retry-after-ms`` / ``retry-after``), every attempt's timeout shrinks to what is left of
one overall deadline, and a retry whose wait would cross that deadline must not happen at
all (the caller gets the real upstream error instead). ``backoff``'s wait generators see
neither the response headers alongside the exponential schedule nor the per-attempt
budget, so a few explicit lines here are clearer than bending its decorators.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

# 429 with this code means the account is out of credit: waiting will not fix it.
_NOT_TRANSIENT_CODES = frozenset({"insufficient_quota"})


def is_retryable_status(
    status: int, code: str | None = None, *, should_retry: str | None = None
) -> bool:
    """What OpenAI's SDKs retry: the ``x-should-retry`` header decides when present
    (``true``/``false``); otherwise 408, 409, 429 and 5xx (an out-of-credit 429 never)."""
    hint = (should_retry or "").strip().lower()
    if hint == "true":
        return True
    if hint == "false":
        return False
    if code in _NOT_TRANSIENT_CODES:
        return False
    return status in (408, 409, 429) or 500 <= status <= 599


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, from any mapping (plain dicts in tests)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _finite_non_negative(value: float) -> float | None:
    if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, value)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the upstream asks us to wait, or None when it gives no (usable) hint.

    ``retry-after-ms`` (OpenAI's, milliseconds) wins over ``retry-after`` (seconds or an
    HTTP date, RFC 9110). A date in the past means "now" (0). Garbage is ignored.
    """
    raw_ms = header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            value = _finite_non_negative(float(raw_ms.strip()) / 1000.0)
        except ValueError:
            value = None
        if value is not None:
            return value
    raw = header(headers, "retry-after")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    try:
        return _finite_non_negative(float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; email.utils returns a naive datetime for "-0000".
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def backoff_delay(
    retry: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter" for retry number ``retry`` (0-based).

    The wait lies in ``[d/2, d]`` with ``d = min(cap_s, base_s * 2**retry)``: never zero
    (so a burst of clients does not hammer a struggling upstream) and never above the cap.
    """
    ceiling = min(cap_s, base_s * (2.0**retry))
    return ceiling / 2.0 + rand() * ceiling / 2.0


def retry_delay(
    retry: int,
    *,
    retry_after_s: float | None,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """The upstream's own hint when it gave one (capped), else the backoff schedule."""
    if retry_after_s is not None:
        return min(retry_after_s, cap_s)
    return backoff_delay(retry, base_s=base_s, cap_s=cap_s, rand=rand)
