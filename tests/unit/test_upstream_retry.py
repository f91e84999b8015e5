"""The mint retry policy: Retry-After parsing, retryable statuses, the backoff schedule."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from relay.upstream.retry import (
    backoff_delay,
    is_retryable_status,
    parse_retry_after,
    retry_delay,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()


def _http_date(offset_s: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset_s, tz=UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250.5"}, 0.2505),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": " 0.75 "}, 0.75),
        ({"retry-after": "-4"}, 0.0),
        # The millisecond hint wins over the seconds one.
        ({"retry-after-ms": "200", "retry-after": "9"}, 0.2),
        # A garbage millisecond hint falls back to retry-after.
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({"retry-after": _http_date(7)}, 7.0),
        ({"retry-after": _http_date(-60)}, 0.0),
        ({"retry-after": "Sat, 28 Nov 2026 12:00:05 -0000"}, 5.0),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": "Sat, 99 Foo 2026"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": ""}, None),
        ({"content-type": "application/json"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    value = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retryable(status: int) -> None:
    # As the official SDK: 408 (timeout) and 409 (lock conflict) too.
    assert is_retryable_status(status)
    assert is_retryable_status(status, "server_error")


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 403, 404, 422, 600])
def test_other_statuses_are_not_retryable(status: int) -> None:
    assert not is_retryable_status(status)


@pytest.mark.parametrize(
    ("status", "hint", "expected"),
    [
        (400, "true", True),
        (503, "false", False),
        (429, "FALSE", False),
        (401, " true ", True),
        (500, "maybe", True),  # not a hint: the status decides
        (400, "", False),
    ],
)
def test_x_should_retry_header_decides_first(status: int, hint: str, expected: bool) -> None:
    assert is_retryable_status(status, should_retry=hint) is expected


def test_exhausted_quota_is_not_retried() -> None:
    assert not is_retryable_status(429, "insufficient_quota")
    assert is_retryable_status(429, "rate_limit_exceeded")


@pytest.mark.parametrize("retry", range(6))
def test_backoff_delay_bounds(retry: int) -> None:
    base, cap = 0.5, 5.0
    ceiling = min(cap, base * 2**retry)
    low = backoff_delay(retry, base_s=base, cap_s=cap, rand=lambda: 0.0)
    high = backoff_delay(retry, base_s=base, cap_s=cap, rand=lambda: 1.0)
    assert low == pytest.approx(ceiling / 2)
    assert high == pytest.approx(ceiling)
    rng = random.Random(retry)
    for _ in range(200):
        value = backoff_delay(retry, base_s=base, cap_s=cap, rand=rng.random)
        assert ceiling / 2 <= value <= ceiling


def test_backoff_grows_exponentially_until_the_cap() -> None:
    highs = [backoff_delay(n, base_s=0.1, cap_s=1.0, rand=lambda: 1.0) for n in range(6)]
    assert highs == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_retry_delay_prefers_the_upstream_hint_capped() -> None:
    def rand() -> float:
        return 0.5

    assert retry_delay(0, retry_after_s=1.25, base_s=0.5, cap_s=5.0, rand=rand) == 1.25
    assert retry_delay(3, retry_after_s=0.0, base_s=0.5, cap_s=5.0, rand=rand) == 0.0
    assert retry_delay(0, retry_after_s=60.0, base_s=0.5, cap_s=5.0, rand=rand) == 5.0
    assert retry_delay(1, retry_after_s=None, base_s=0.5, cap_s=5.0, rand=rand) == 0.75
