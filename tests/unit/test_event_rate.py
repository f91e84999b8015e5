"""The per-type token bucket of the browser's allowed events (pure logic, a fake clock)."""

from __future__ import annotations

from relay.media.event_rate import TypeRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_per_type() -> None:
    clock = Clock()
    limiter = TypeRateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.allow("response.cancel") for _ in range(4)] == [True, True, True, False]
    # Each type has its own bucket.
    assert limiter.allow("output_audio_buffer.clear")
    clock.now += 0.4  # 0.8 of a token
    assert not limiter.allow("response.cancel")
    clock.now += 0.1  # a whole token
    assert limiter.allow("response.cancel")
    assert not limiter.allow("response.cancel")
    # Refill stops at the burst.
    clock.now += 100
    assert [limiter.allow("response.cancel") for _ in range(4)] == [True, True, True, False]
