"""Kafka clients configured the one way zapflow uses them (see ADR 0004 for why not idempotent)."""

from __future__ import annotations

import asyncio
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient


def producer(bootstrap_servers: str, **overrides: object) -> AIOKafkaProducer:
    """acks=all and awaited sends; the dev broker lacks InitProducerId, so no idempotence."""
    options: dict[str, object] = {
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 2,
        "request_timeout_ms": 15000,
    }
    options.update(overrides)
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **options)


FETCH_WAIT_MS: Final = 20
"""How long the broker holds a fetch that has nothing new. aiokafka's default (500 ms) adds up
to half a second to every hop of a message (webhook → decider → agent → decider → sender:
four hops); 20 ms costs a few idle fetches a second per worker instead (BENCHMARKS.md)."""


def groupless_consumer(bootstrap_servers: str, **overrides: object) -> AIOKafkaConsumer:
    """A reader that never joins a group and never commits: assign + seek only."""
    options: dict[str, object] = {
        "fetch_max_wait_ms": FETCH_WAIT_MS,
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_uncommitted",
    }
    options.update(overrides)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, **options)


def admin(bootstrap_servers: str, timeout_s: float = 10.0) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000)
    )


async def probe(bootstrap_servers: str, timeout_s: float) -> str | None:
    """None when the broker answers a metadata request within the timeout, else why not."""
    client = admin(bootstrap_servers, timeout_s)
    try:
        await asyncio.wait_for(client.start(), timeout_s)
        await asyncio.wait_for(client.list_topics(), timeout_s)
    except (TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc or 'no answer'}".splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - aiokafka raises many unrelated types here
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        await client.close()
    return None
