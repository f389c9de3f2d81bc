"""Rate limits that make the excess wait, never fail: GCRA, one reservation per call.

Each `wait()` reserves the next free slot at once (so waiters go in arrival order) and sleeps
until it; `burst` calls may go back to back after a quiet spell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final

_PRUNE_AT: Final = 10_000


@dataclass(slots=True)
class Gcra:
    rate: float
    burst: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _tat: float = 0.0

    def reserve(self) -> float:
        """Seconds until the reserved slot (0: go now)."""
        now = self.clock()
        tat = max(self._tat, now)
        self._tat = tat + 1.0 / self.rate
        return max(0.0, tat - now - (self.burst - 1.0) / self.rate)

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def idle(self) -> bool:
        return self._tat < self.clock()


@dataclass(slots=True)
class Limits:
    """One GCRA per key (e.g. (tenant, sender)); idle ones are dropped now and then."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    buckets: dict[Hashable, Gcra] = field(default_factory=dict)

    async def wait(self, key: Hashable) -> None:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= _PRUNE_AT:
                self.buckets = {k: b for k, b in self.buckets.items() if not b.idle()}
            bucket = self.buckets[key] = Gcra(self.rate, self.burst, self.clock)
        await bucket.wait()
