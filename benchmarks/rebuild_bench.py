"""Rebuild: `zapflow projections rebuild conversations` over a log of a million events.

The events are what the real decider decides for the decider scenario's commands (50 tenants,
20 conversations each), sealed and appended chunk by chunk to a fresh topic without ever being
held in memory all at once. Ours is `projections.versions.rebuild` end to end: a new version's
schema and tables, a projector of its own from offset 0, caught up with the log end, the swap.
The baseline is a raw `executemany` of the same read-model rows (no archive: a rebuild does not
archive) for the first events of the same log, in the same run.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final

from benchmarks.decider_bench import TENANTS, Rate
from benchmarks.infra import Infra, create_topic
from benchmarks.projector_bench import decided_chunks, same_rows_rate
from events.envelope import EventEnvelope
from projections import conversations, versions
from streams import kafka
from streams.log import append

CHUNK: Final = 10_000
BASELINE_EVENTS: Final = 100_000


@dataclass(frozen=True, slots=True)
class RebuildRun:
    ours: Rate
    baseline: Rate
    events: int
    kinds: Counter[str]
    version: int
    publish_s: float


async def _publish(
    infra: Infra, commands: int
) -> tuple[str, int, Counter[str], list[EventEnvelope]]:
    topic = await create_topic(infra, "rebuild-events")
    producer = kafka.producer(infra.bootstrap_servers, linger_ms=5)
    kinds: Counter[str] = Counter()
    sample: list[EventEnvelope] = []
    await producer.start()
    try:
        for chunk in decided_chunks(commands, CHUNK):
            for start in range(0, len(chunk), 1000):
                await append(producer, chunk[start : start + 1000], topic)
            kinds.update(e.type for e in chunk)
            if len(sample) < BASELINE_EVENTS:
                sample.extend(chunk[: BASELINE_EVENTS - len(sample)])
    finally:
        await producer.stop()
    return topic, sum(kinds.values()), kinds, sample


async def rebuild_run(infra: Infra, events: int) -> RebuildRun:
    """Append about `events` events, rebuild `conversations` from them, and time both ways."""
    started = time.perf_counter()
    topic, total, kinds, sample = await _publish(infra, events - TENANTS - 1000)
    published = time.perf_counter() - started
    gc.collect()
    gc.freeze()  # the baseline's sample stays out of the rebuild's garbage collections
    try:
        rebuilt = await versions.rebuild(
            infra.bootstrap_servers, infra.database_url, conversations.NAME, topic=topic
        )
    finally:
        gc.unfreeze()
    baseline = await same_rows_rate(infra.database_url, sample, archive=False)
    return RebuildRun(
        Rate(total, rebuilt.seconds), baseline, total, kinds, rebuilt.version, published
    )
