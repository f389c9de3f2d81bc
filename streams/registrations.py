"""The registration saga runner: folds every registration from the log and issues its next step.

A group-less reader of `zapflow.events` that commits nothing, like the agent runner and the
sender (ADR 0014, 0015): at start it folds the whole log, every partition, with the saga's own
`commands.registration_saga.evolve` (its tenant's events and the platform directory's), so
after a crash the log alone says where each registration is. Once caught up, and again after
every event folded into a registration, it issues `next_step` as a command envelope with the
saga's fixed command id, `issued_at` = the recorded time of the newest event folded into that
registration (never the clock), `correlation_id` = the registration id, keyed by the tenant
(the platform tenant for the e-mail directory).

Timeouts (ADR 0018): a step whose outcome has not appeared after `step_timeout_s` is issued
again, the same envelope (the decider recognises the id). A forward step still unanswered after
`max_reissues` re-issues is given up (`give_up`): the saga compensates, as if it were rejected.
Completion and the compensations are never given up (stopping there would leave a registration
half done): they are re-issued at the same pace for as long as it takes, each time logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from uuid import UUID

from aiokafka import AIOKafkaProducer

from commands.registration import invitation_id_of, user_id_of
from commands.registration_saga import (
    COMMAND_NAMES,
    Saga,
    command_id,
    evolve,
    forward_step,
    give_up,
    next_step,
)
from events.catalog import EVENT_REGISTRY
from events.envelope import CommandEnvelope, EventEnvelope
from events.platform import CommandRejected
from events.registry import Message
from streams import kafka
from streams.log import follow, stop_within, submit_envelope
from streams.topics import EVENTS

log = logging.getLogger("zapflow.registrations")

_TICK_S: Final = 0.02
_SAGA_EVENTS: Final = frozenset({
    "UserRegistrationStarted", "UserRegistrationCompensating", "UserRegistrationCompleted",
    "UserRegistrationFailed", "EmailReserved", "EmailReservationReleased", "UserCreated",
    "UserDisabled", "UserEnabled", "MembershipAdded", "MembershipRemoved", "InvitationIssued",
    "InvitationRevoked", "CommandRejected",
})  # fmt: skip
"""What `evolve` looks at; every other event is skipped before it is decoded."""
_PLATFORM_COMMANDS: Final = frozenset({"ReserveEmail", "ReleaseEmail"})

type Outlet = Callable[[CommandEnvelope], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RegistrationOptions:
    step_timeout_s: float = 30.0
    """How long a step's outcome may take before the step is issued again."""
    max_reissues: int = 3
    """Re-issues of an unanswered forward step before it counts as failed."""


@dataclass(slots=True)
class _Issued:
    envelope: CommandEnvelope
    at: float
    attempts: int = 1


@dataclass(slots=True)
class RegistrationRunner:
    """Folds events into sagas and issues their steps through `send`; `run_registrations`
    drives it."""

    send: Outlet
    options: RegistrationOptions = field(default_factory=RegistrationOptions)
    clock: Callable[[], float] = time.monotonic
    name: str = "registrations"
    sagas: dict[UUID, Saga] = field(default_factory=dict)
    triggered_at: dict[UUID, datetime] = field(default_factory=dict)
    """Registration → when the newest event folded into it was recorded."""
    routes: dict[str, UUID] = field(default_factory=dict)
    """A registration's user id, invitation id and saga command ids → the registration."""
    orphans: dict[str, CommandRejected] = field(default_factory=dict)
    """Rejections of directory commands read before their registration's start (another
    partition, read in any order): folded into the saga once it appears."""
    last_seq: dict[UUID, int] = field(default_factory=dict)
    issued: dict[UUID, _Issued] = field(default_factory=dict)
    """Registration → its step sent and not yet answered."""
    changed: set[UUID] = field(default_factory=set)
    caught_up: bool = False

    def fold(self, envelope: EventEnvelope) -> None:
        if envelope.tenant_seq <= self.last_seq.get(envelope.tenant_id, 0):
            return  # a duplicate in the log
        self.last_seq[envelope.tenant_id] = envelope.tenant_seq
        if envelope.type not in _SAGA_EVENTS:
            return
        event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
        rid = self._route(event)
        if rid is None:
            if isinstance(event, CommandRejected) and event.command_type in _PLATFORM_COMMANDS:
                self.orphans[event.command_id] = event
            return
        self.sagas[rid] = evolve(self.sagas[rid], event)
        self.triggered_at[rid] = envelope.recorded_at
        self.changed.add(rid)

    def _route(self, event: Message) -> UUID | None:
        rid = getattr(event, "registration_id", None)
        if isinstance(rid, UUID):
            self._known(rid)
            return rid
        if isinstance(event, CommandRejected):
            return self.routes.get(event.command_id)
        for key in ("user_id", "invitation_id"):
            found = self.routes.get(str(getattr(event, key, None)))
            if found is not None:
                return found
        return None

    def _known(self, rid: UUID) -> None:
        if rid in self.sagas:
            return
        saga = Saga(rid)
        keys = [str(user_id_of(rid)), str(invitation_id_of(rid))]
        keys += [str(command_id(rid, name)) for name in COMMAND_NAMES]
        for key in keys:
            self.routes[key] = rid
            orphan = self.orphans.pop(key, None)
            if orphan is not None:
                saga = evolve(saga, orphan)
        self.sagas[rid] = saga

    def caught_up_with_log(self) -> None:
        self.caught_up = True
        open_ = sum(1 for saga in self.sagas.values() if next_step(saga))
        log.info("registrations caught up with the log; %d of %d registrations have a step "
                 "to take", open_, len(self.sagas))  # fmt: skip

    async def tick(self) -> None:
        if not self.caught_up:
            return
        now = self.clock()
        due = [envelope for rid in self.changed for envelope in self._next(rid, now)]
        self.changed.clear()
        due += self._overdue(now)
        if due:
            await asyncio.gather(*(self.send(envelope) for envelope in due))

    def _next(self, rid: UUID, now: float) -> list[CommandEnvelope]:
        """The saga's next step as an envelope, unless it is the one already waiting."""
        saga = self.sagas[rid]
        steps = next_step(saga)
        if not steps:
            if self.issued.pop(rid, None) is not None and saga.stuck:
                log.error("registration stuck: %s", saga.stuck, extra=_context(rid, saga))
            return []
        (step,) = steps  # the saga takes one step at a time
        waiting = self.issued.get(rid)
        if waiting is not None and waiting.envelope.command_id == step.command_id:
            return []
        envelope = CommandEnvelope(
            command_id=step.command_id, tenant_id=step.tenant_id, type=step.command.type,
            schema_version=step.command.schema_version, issued_at=self.triggered_at[rid],
            correlation_id=rid, payload=step.command.payload(),
        )  # fmt: skip
        self.issued[rid] = _Issued(envelope, now)
        return [envelope]

    def _overdue(self, now: float) -> list[CommandEnvelope]:
        """Steps unanswered for `step_timeout_s`: issued again, or, for a forward step issued
        `max_reissues` times over, given up so the saga compensates."""
        due = []
        timeout, limit = self.options.step_timeout_s, self.options.max_reissues
        for rid, waiting in list(self.issued.items()):
            if now - waiting.at < timeout:
                continue
            saga, envelope = self.sagas[rid], waiting.envelope
            step = forward_step(envelope.type)
            if waiting.attempts > limit and step is not None:
                reason = f"timeout: no outcome of {step} after {waiting.attempts} attempts"
                log.warning("giving up a step: %s", reason, extra=_context(rid, saga))
                self.sagas[rid] = give_up(saga, step, reason)
                due += self._next(rid, now)
                waiting.at = now  # if it was not given up after all, wait again
                continue
            level = logging.ERROR if waiting.attempts > limit else logging.WARNING
            log.log(level, "no outcome of %s after %.0f s; issuing it again (attempt %d)",
                    envelope.type, now - waiting.at, waiting.attempts + 1,
                    extra=_context(rid, saga))  # fmt: skip
            waiting.at, waiting.attempts = now, waiting.attempts + 1
            due.append(envelope)
        return due


def _context(rid: UUID, saga: Saga) -> dict[str, str]:
    tenant = saga.started.tenant_id if saga.started is not None else None
    return {"correlation_id": str(rid), "tenant_id": str(tenant)}


async def run_registrations(
    bootstrap_servers: str,
    stop: asyncio.Event,
    options: RegistrationOptions = RegistrationOptions(),
    topic: str = EVENTS,
    grace_s: float = 5.0,
) -> None:
    """Drive every registration until `stop` is set."""
    await stop_within(_serve(bootstrap_servers, stop, options, topic), stop, grace_s,
                      "registrations")  # fmt: skip


async def _serve(
    bootstrap_servers: str, stop: asyncio.Event, options: RegistrationOptions, topic: str
) -> None:
    producer: AIOKafkaProducer = kafka.producer(bootstrap_servers)
    consumer = kafka.groupless_consumer(bootstrap_servers, max_partition_fetch_bytes=1 << 20)
    await producer.start()
    await consumer.start()

    async def send(envelope: CommandEnvelope) -> None:
        await submit_envelope(producer, envelope)

    try:
        await follow(consumer, topic, stop, RegistrationRunner(send, options), _TICK_S)
    finally:
        await consumer.stop()
        await producer.stop()
