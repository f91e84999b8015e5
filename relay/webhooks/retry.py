"""When a failed delivery is attempted again: exponential backoff with jitter.

The n-th retry waits between half and all of ``min(retry_max_interval_s,
retry_base_s * 2**(n-1))`` ("equal jitter"): the wait doubles, as a receiver that is down
needs, while deliveries that failed together (an endpoint down for everyone) spread out
instead of coming back at the same instant.
"""

from __future__ import annotations

import random

from relay.config import WebhooksConfig

# 2**MAX_DOUBLINGS times the base is already beyond any allowed maximum interval.
MAX_DOUBLINGS = 40


def retry_delay_s(failed_attempts: int, config: WebhooksConfig, rng: random.Random) -> float:
    """The wait after ``failed_attempts`` (≥ 1) failures in a row."""
    exponent = min(max(failed_attempts, 1) - 1, MAX_DOUBLINGS)
    ceiling = min(config.retry_max_interval_s, config.retry_base_s * 2.0**exponent)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
