"""A bounded map whose entries lapse: the API's caches of tenants and of API keys."""

from __future__ import annotations

from collections import OrderedDict


class Expiring[K, V]:
    """Entries live until their expiry; when full, the least recently written go first.

    Thread-unsafe, one per event loop. The caller supplies the clock's `now`, so a cache can be
    tested with a fake monotonic clock.
    """

    __slots__ = ("_entries", "_max_entries")

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries

    def fresh(self, key: K, now: float) -> tuple[float, V] | None:
        """(expiry, value) while the entry lives, else None."""
        hit = self._entries.get(key)
        return hit if hit is not None and hit[0] > now else None

    def put(self, key: K, value: V, expires: float) -> None:
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
