"""The receive-batching benchmark: every variant really receives and forwards the stream,
and its figures are measured, not assumed."""

from __future__ import annotations

from bench.receive_batching import VARIANTS, measure, table


def test_each_variant_carries_the_stream_and_batching_wakes_less() -> None:
    # A 2 ms window at 1,000 datagrams a second: about two per poll. (At the default 1 ms,
    # polls that keep a steady pace read about one each: no fewer wake-ups to show.)
    row = measure(sockets=6, rate=1000, window_s=1.0, rounds=1, batch_ms=2.0)
    assert row["harness"] == "receive_batching" and row["batch_ms"] > 0
    for variant in VARIANTS:
        (count,) = row[variant]["datagrams"]
        (elapsed,) = row[variant]["window_measured_s"]
        # 1,000/s, paced by a clock, over the window as it really elapsed (a loaded machine
        # wakes the receiver's loop late, so the window can be longer than asked; uvloop's
        # millisecond timers may also end it a little early).
        assert elapsed >= 0.99
        assert 800 <= count / elapsed <= 1200, (variant, count, elapsed)
        (us,) = row[variant]["us_per_datagram"]
        assert us > 0
    # 1 ms apart on average: watching wakes about once per datagram, batching (2 ms
    # window) reads more than one per wake-up.
    (watching,) = row["watching"]["datagrams_per_wakeup"]
    (batching,) = row["batching"]["datagrams_per_wakeup"]
    assert batching > watching
    text = table([row])
    assert "uvloop's UDP transport (the control)" in text and "[1.0]" in text
    assert text.count("\n") == 4  # the header, the rule and one line per variant
