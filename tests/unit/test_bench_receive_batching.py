"""The receive-batching benchmark: every variant really receives and forwards the stream,
and its figures are measured, not assumed."""

from __future__ import annotations

from bench.receive_batching import VARIANTS, measure, table


def test_each_variant_carries_the_stream_and_batching_reads_several_per_wakeup() -> None:
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
    # 1 ms apart on average, batching's 2 ms window reads about two per wake-up, and more
    # on a loaded machine (its polls come later). Watching wakes about once per datagram
    # on an idle machine only: on a loaded one its loop also wakes late and reads several
    # (3.2 against batching's 2.0 once in CI), so the two are not compared here; the
    # bench's figures compare them (docs/benchmarks.md).
    (watching,) = row["watching"]["datagrams_per_wakeup"]
    (batching,) = row["batching"]["datagrams_per_wakeup"]
    assert watching >= 1.0
    assert batching >= 1.5
    text = table([row])
    assert "uvloop's UDP transport (the control)" in text and "[1.0]" in text
    assert text.count("\n") == 4  # the header, the rule and one line per variant
