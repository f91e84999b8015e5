"""Pure logic of the database-driven cache invalidation (relay.admission.change_log,
relay.admission.invalidation) and the in-process side of UserCache's eviction API."""

from __future__ import annotations

from relay.admission.cache import UserCache, _glob_escape
from relay.admission.change_log import ChangeLog
from relay.admission.invalidation import first_connect_flush, parse_payload
from relay.admission.local_cache import LocalTTLCache
from relay.admission.users import UserRecord
from relay.config import CacheConfig
from relay.observability.metrics import MetricsRegistry

A = "a" * 64
B = "b" * 64
USER = UserRecord(id=1, email="a@example.test", active=True, remaining_seconds=60)


def test_change_log_flags_only_changes_after_the_mark_of_that_token() -> None:
    log = ChangeLog()
    log.changed(A)
    mark = log.mark()
    assert not log.changed_since(A, mark)  # changed before the read began
    log.changed(B)
    assert not log.changed_since(A, mark)
    assert log.changed_since(B, mark)
    log.changed(A)
    assert log.changed_since(A, mark)
    assert not log.changed_since(A, log.mark())


def test_change_log_forgetting_and_changing_everything_are_cautious() -> None:
    log = ChangeLog(capacity=2)
    mark = log.mark()
    log.changed("t1")
    log.changed("t2")
    later = log.mark()
    log.changed("t3")  # t1 is forgotten: every read begun before it counts as changed
    assert log.changed_since("never-changed", mark)
    assert not log.changed_since("never-changed", later)
    assert log.changed_since("t3", later)
    log.changed_all()
    assert log.changed_since("never-changed", later)
    assert not log.changed_since("never-changed", log.mark())


def test_parse_payload() -> None:
    assert parse_payload(A) == [A]
    assert parse_payload(f" {A.upper()}, {B}\n") == [A, B]
    assert parse_payload("*") is None
    for bad in ("", "abc", A + "0", f"{A} nope", "g" * 64):
        assert parse_payload(bad) == []


def test_first_connect_flushes_unless_another_process_listens() -> None:
    assert first_connect_flush([], "me")
    # Its own announcement is a crashed earlier run of this same process, not a listener.
    assert first_connect_flush(["me"], "me")
    assert not first_connect_flush(["other"], "me")
    assert not first_connect_flush(["me", "other"], "me")


def test_glob_escape_matches_a_prefix_literally() -> None:
    assert _glob_escape("relay:") == "relay:"
    assert _glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


def test_local_cache_clear_counts_entries() -> None:
    cache: LocalTTLCache[int] = LocalTTLCache(10)
    cache.set("x", 1, 60)
    cache.set("y", 2, 60)
    assert cache.clear() == 2
    assert cache.lookup("x") == (False, None) and len(cache) == 0


async def test_forgetting_drops_known_and_unknown_entries_locally() -> None:
    metrics = MetricsRegistry()
    cache = UserCache(CacheConfig(), metrics)
    await cache.put(A, USER)
    await cache.put(B, None)
    assert cache.cached_locally(A) and cache.cached_locally(B)
    cache.forget_locally([A, B])
    assert not cache.cached_locally(A) and not cache.cached_locally(B)
    invalidations = metrics.counter("relay_cache_invalidations_total", "", ["source"]).value(
        source="database"
    )
    assert invalidations == 2
    await cache.put(A, USER)
    await cache.put(B, None)
    assert cache.forget_all_locally() == 2
    assert await cache.get(A) is None and await cache.get(B) is None
    await cache.close()


async def test_a_record_read_while_its_row_changed_is_not_kept() -> None:
    cache = UserCache(CacheConfig(), MetricsRegistry())
    mark = cache.mark()
    cache.forget_locally([A])  # the row changed while the database read was in flight
    await cache.put(A, USER, read_mark=mark)
    assert not cache.cached_locally(A)
    # Another token's change does not matter; a read begun after the change is kept.
    await cache.put(B, USER, read_mark=mark)
    assert cache.cached_locally(B)
    await cache.put(A, USER, read_mark=cache.mark())
    assert cache.cached_locally(A)
    # A flush (or a gap in listening) counts as a change of every token.
    mark = cache.mark()
    cache.forget_all_locally()
    await cache.put(B, USER, read_mark=mark)
    assert not cache.cached_locally(B)
    await cache.close()


async def test_without_redis_the_shared_operations_are_no_ops() -> None:
    cache = UserCache(CacheConfig(), MetricsRegistry())
    assert not cache.shared
    assert await cache.evict_shared([A]) is True
    assert await cache.flush_shared() == 0
    assert await cache.listeners_present() is None
    await cache.close()
