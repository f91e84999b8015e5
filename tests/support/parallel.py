"""Which of the test run's parallel workers this process is (pytest-xdist, ``-n``).

Every worker has its own session fixtures (its own PostgreSQL, its own temporary
directories, its own run mark for the leftover check), so most tests need nothing from
here. Tests that must use ports from a fixed range (a media port range, coturn's relay
range) take the slice of that range that belongs to their worker, so that two workers
never pick the same ports at the same moment.
"""

from __future__ import annotations

import os


def worker_index() -> int:
    """0 for the first worker (``gw0``) and for a run without workers, then 1, 2, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def worker_slice(low: int, high: int, size: int) -> tuple[int, int]:
    """This worker's ``size`` ports from ``low``..``high`` (inclusive), for fixed ranges."""
    start = low + worker_index() * size
    end = start + size - 1
    if end > high:
        raise AssertionError(f"no room for worker {worker_index()} in ports {low}-{high}")
    return start, end
