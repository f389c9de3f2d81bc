"""The command spool: accepted commands wait in PostgreSQL while the broker is away, then relay.

`submit` produces to the broker (acks=all, bounded wait); if that fails or times out, the
record goes into `command_spool` instead and the webhook still succeeds. From then on this
process spools every command until the relay has emptied the table, so its commands keep their
order. The relay drains in id order under an advisory lock (one replica at a time), produces
each batch with acks=all and deletes the rows only after the broker acknowledged all of them.

Duplicates are possible and harmless: a produce that timed out may still land, next to its
spooled copy, and a batch that failed half-way is sent again. The decider deduplicates by
MessageSid (and by MessageSid + status for status callbacks), so a command counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Literal
from uuid import UUID

import asyncpg
from aiokafka.errors import KafkaError

from api.broker import BrokerLink, BrokerUnavailable
from events.envelope import (
    CommandEnvelope,
    KafkaHeaders,
    encode_command,
    headers_from_json,
    headers_to_json,
)
from streams.topics import COMMANDS

log = logging.getLogger("zapflow.api.spool")

type Route = Literal["broker", "spool"]

_LOCK_KEY: Final = 0x7A665F73706F6F6C  # "zf_spool"
_RETRY_FIRST_S: Final = 0.2
_RETRY_MAX_S: Final = 5.0
_INSERT: Final = """
INSERT INTO command_spool (tenant_id, topic, key, value, headers) VALUES ($1, $2, $3, $4, $5)
"""


class CommandSpool:
    """Where accepted commands go: the broker when it answers, else the spool table."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: BrokerLink,
        *,
        produce_timeout_s: float,
        topic: str = COMMANDS,
        batch_size: int = 500,
        batch_timeout_s: float = 30.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._produce_timeout_s = produce_timeout_s
        self._topic = topic
        self._batch_size = batch_size
        self._batch_timeout_s = batch_timeout_s
        self._idle_poll_s = idle_poll_s
        self._spooling = False
        self._inflight = 0  # inserts started and not finished
        self._inserted = 0  # inserts finished, ever
        self._wake = asyncio.Event()

    @property
    def spooling(self) -> bool:
        return self._spooling

    async def recover(self) -> None:
        """Start in spooling mode when an earlier run left rows behind (keeps their order)."""
        try:
            self._spooling = bool(await self._pool.fetchval("SELECT EXISTS (TABLE command_spool)"))
        except asyncpg.UndefinedTableError:
            log.warning("command_spool does not exist yet; run `zapflow migrate`")

    async def submit(self, envelope: CommandEnvelope) -> Route:
        """Make `envelope` durable: acked by the broker, or committed to the spool."""
        key, value, headers = encode_command(envelope)
        return await self.submit_record(
            envelope.tenant_id, envelope.command_id, key, value, headers
        )

    async def submit_record(
        self, tenant_id: UUID, command_id: UUID, key: bytes, value: bytes, headers: KafkaHeaders
    ) -> Route:
        """`submit` of a command already encoded (`events.envelope.encode_command`'s bytes)."""
        if not self._spooling:
            try:
                await self._broker.send(self._topic, key, value, headers, self._produce_timeout_s)
            except (KafkaError, TimeoutError, BrokerUnavailable) as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.warning(
                    "produce failed, spooling the command (%s)",
                    reason,
                    extra={"tenant_id": tenant_id, "command_id": command_id},
                )
            else:
                return "broker"
        await self.insert(tenant_id, key, value, headers)
        log.info("command spooled", extra={"tenant_id": tenant_id, "command_id": command_id})
        return "spool"

    async def insert(
        self, tenant_id: UUID, key: bytes, value: bytes, headers: KafkaHeaders
    ) -> None:
        """Append one record to the spool; from now on this process spools until it is drained."""
        self._spooling = True
        self._inflight += 1
        try:
            await self._pool.execute(
                _INSERT, tenant_id, self._topic, key, value, headers_to_json(headers)
            )
            self._inserted += 1
        finally:
            self._inflight -= 1
        self._wake.set()

    async def drain_once(self) -> int | None:
        """Relay one batch; the number of rows sent, or None if another replica holds the lock."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
                return None
            rows = await conn.fetch(
                "SELECT id, topic, key, value, headers::text AS headers FROM command_spool "
                "ORDER BY id LIMIT $1",
                self._batch_size,
            )
            if not rows:
                return 0
            producer = self._broker.producer
            if producer is None:
                raise BrokerUnavailable(self._broker.problem)
            # Sent in id order; aiokafka keeps the order of one partition's records.
            acks = [
                await producer.send(
                    row["topic"],
                    row["value"],
                    key=row["key"],
                    headers=headers_from_json(row["headers"]),
                )
                for row in rows
            ]
            await asyncio.wait_for(asyncio.gather(*acks), self._batch_timeout_s)
            await conn.execute(
                "DELETE FROM command_spool WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
            return len(rows)

    async def relay(self) -> None:
        """Drain the spool forever, with backoff while the broker or the database is away."""
        delay = _RETRY_FIRST_S
        while True:
            self._wake.clear()
            inserted_before = self._inserted
            try:
                sent = await self.drain_once()
            except (
                KafkaError,
                OSError,
                TimeoutError,
                BrokerUnavailable,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as e:
                log.warning("spool relay waits %.1fs: %s: %s", delay, type(e).__name__, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            delay = _RETRY_FIRST_S
            if sent:
                log.info("relayed %d spooled commands", sent)
                continue
            if sent == 0 and self._inflight == 0 and self._inserted == inserted_before:
                # Empty, and nothing of ours was added meanwhile: direct produce keeps the order.
                self._spooling = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_poll_s)
