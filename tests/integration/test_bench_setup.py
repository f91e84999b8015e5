"""The benchmarks' own set-up against the real command line: a fresh data folder gets its
candidates (the relay's CLI refuses to create a database unasked, so the bench asks)."""

from __future__ import annotations

from pathlib import Path

from bench.admission import import_users
from bench.relay_process import add_user, relay_env


def test_the_bench_creates_its_candidates_in_a_new_data_folder(
    traversable_tmp_path: Path,
) -> None:
    assert add_user(traversable_tmp_path).startswith("rt_")
    # A second command finds the database the first one made.
    tokens = import_users(3, traversable_tmp_path, relay_env(traversable_tmp_path, "fast"))
    assert len(tokens) == 3 and all(t.startswith("rt_") for t in tokens)
    assert len(set(tokens)) == 3
