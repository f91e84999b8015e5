"""Which cached users changed while a database read was in flight (the cache-fill race).

A cache miss reads the user from PostgreSQL, then writes the record to the cache. If the
row changes between the read and the write, the change's eviction (relay.admission.
invalidation) can reach Redis *before* the write, and the stale record would then live for
the whole ``hit_ttl_s``. So a miss takes a ``mark()`` before reading, and the cache asks
``changed_since(token_hash, mark)`` around its write: if a change for that token (or a
change to everything: a flush, a lost or new listening connection) was seen since, the
record is not kept.

Per token, only the last ``capacity`` changed tokens are remembered; anything older that
is forgotten raises a floor that counts as a change for every token, so forgetting can
only make the answer more cautious, never wrong.
"""

from __future__ import annotations

from collections import OrderedDict


class ChangeLog:
    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._seq = 0
        # Counts as a change of every token: the last change to everything, or the newest
        # change forgotten from _last.
        self._floor = 0
        self._last: OrderedDict[str, int] = OrderedDict()

    def mark(self) -> int:
        """Taken before a read: later changes compare greater."""
        return self._seq

    def changed(self, token_hash: str) -> None:
        self._seq += 1
        self._last[token_hash] = self._seq
        self._last.move_to_end(token_hash)
        while len(self._last) > self._capacity:
            _, forgotten = self._last.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def changed_all(self) -> None:
        self._seq += 1
        self._last.clear()
        self._floor = self._seq

    def changed_since(self, token_hash: str, mark: int) -> bool:
        return max(self._floor, self._last.get(token_hash, 0)) > mark
