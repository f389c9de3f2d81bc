"""The sender: each `OutboundMessageRequested` becomes WhatsApp message(s) exactly once (ADR 0015).

Like the agent runner (ADR 0014) it is a group-less consumer of `zapflow.events` that commits
nothing: at start it folds the whole log, so the work left is every requested message without
an outcome (`OutboundMessageSent`/`Failed`/`Blocked`), in log order per conversation. For each:

1. the policy check (`commands.send.plan_send`) on the conversation as it stands now: opted
   out, or a human took over from the bot → blocked; window closed → the tenant's window
   template, else blocked;
2. per part: wait for the rate limits (per sender, per recipient: excess waits, never fails);
   write the ledger row `attempting` (committed) → call Twilio with a `StatusCallback` → mark
   the row `sent` (SID), `failed` (Twilio's code) or `not_sent` (a 429: never processed);
3. the outcome goes to the decider as `RecordSendResult`, whose command id is derived from the
   outbound id.

A row found `attempting` (a crash, or a call whose answer never came: a timeout, a dropped
connection, a 5xx) is ambiguous; it is reconciled through Twilio's API (messages to that
recipient from that sender since the attempt, same body, not already in the ledger) once the
call can no longer be in progress, and only a message that is not there is sent again.

Calls run concurrently (at most `max_in_flight`), one conversation (recipient) at a time and
in order, so Twilio's latency does not cap throughput and a contact's messages keep their order.

A suspended tenant's messages are held (ADR 0018): the suspension is folded from the log like
everything else, no message of that tenant starts going out (its first part is never attempted)
until `TenantReactivated` is folded, and then they go out as any other, in order, through the
ledger. A restart folds the suspension again, so nothing held is lost or sent early.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from uuid import UUID, uuid5

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from commands import conversation as conv
from commands.send import Blocked, RecordSendResult, SendPlan, plan_send, split_body
from events.catalog import EVENT_REGISTRY
from events.conversation import (
    CONVERSATION_EVENTS,
    BlockReason,
    OutboundMessageBlocked,
    OutboundMessageFailed,
    OutboundMessageRequested,
    OutboundMessageSent,
)
from events.envelope import EventEnvelope
from events.tenant import (
    AgentConfigured,
    Template,
    TenantReactivated,
    TenantRegistered,
    TenantSuspended,
    TwilioCredentialsRotated,
)
from projections.credentials import SecretError, decrypt_secret
from streams import kafka
from streams.ledger import Ledger, Part, keep_session
from streams.log import follow, stop_within, submit
from streams.rate import Limits
from streams.topics import EVENTS, is_shadow
from streams.twilio_api import (
    Created,
    HttpxTwilioClient,
    NotSent,
    Refused,
    TwilioMessages,
    Unknown,
)

log = logging.getLogger("zapflow.sender")

_TICK_S: Final = 0.02
LOOKUP_ATTEMPTS: Final = 20
_PRODUCE_RETRY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class SenderOptions:
    public_url: str
    twilio_api_url: str | None = None
    timeout_s: float = 10.0
    rate_per_sender: float = 80.0
    rate_per_recipient: float = 5.0
    max_in_flight: int = 64
    settle_s: float = 15.0
    """After an unanswered call's timeout, how long before its message is looked up: Twilio
    may still be processing the call, and a lookup before it is done would send it twice."""
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    max_attempts: int = 8
    """Calls of one part that end in a 5xx or no answer before the message is given up."""


@dataclass(slots=True)
class _Tenant:
    account_sid: str | None = None
    token_encrypted: str | None = None
    window_template: Template | None = None
    last_seq: int = 0
    suspended: bool = False
    held: set[str] = field(default_factory=set)
    """Conversations with messages waiting for the tenant's reactivation."""


@dataclass(slots=True)
class _Conversation:
    tenant_id: UUID
    state: conv.Conversation
    queue: deque[OutboundMessageRequested] = field(default_factory=deque)
    submitted: set[str] = field(default_factory=set)
    """Outbound ids whose result this process sent to the decider (not yet seen decided)."""


@dataclass(frozen=True, slots=True)
class _Result:
    outcome: Literal["sent", "failed", "blocked"]
    sids: tuple[str, ...] = ()
    content_sid: str | None = None
    code: str | None = None
    detail: str = ""
    reason: BlockReason | None = None


@dataclass(frozen=True, slots=True)
class _Held:
    """The tenant is suspended: the message has not started going out and waits."""


HELD: Final = _Held()


class _GiveUp(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(slots=True)
class Sender:
    producer: AIOKafkaProducer
    ledger: Ledger
    http: HttpxTwilioClient
    secret_key: bytes
    options: SenderOptions
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    conversations: dict[str, _Conversation] = field(default_factory=dict)
    tenants: dict[UUID, _Tenant] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    """Conversations with requests queued (the only ones a tick looks at)."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    caught_up: bool = False
    clients: dict[UUID, TwilioMessages] = field(default_factory=dict)
    in_flight: asyncio.Semaphore = field(init=False)
    per_sender: Limits = field(init=False)
    per_recipient: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.in_flight = asyncio.Semaphore(self.options.max_in_flight)
        rate_s, rate_r = self.options.rate_per_sender, self.options.rate_per_recipient
        self.per_sender = Limits(rate_s, burst=max(1.0, rate_s))
        self.per_recipient = Limits(rate_r, burst=max(1.0, rate_r))

    # -- folding ---------------------------------------------------------------------------

    def fold(self, envelope: EventEnvelope) -> None:
        tenant = self.tenants.setdefault(envelope.tenant_id, _Tenant())
        if envelope.tenant_seq <= tenant.last_seq:
            return  # a duplicate in the log
        tenant.last_seq = envelope.tenant_seq
        event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
        if isinstance(event, TenantRegistered | TwilioCredentialsRotated):
            tenant.account_sid = event.twilio_account_sid
            tenant.token_encrypted = event.twilio_auth_token_encrypted
            self.clients.pop(envelope.tenant_id, None)  # the next call uses these
            return
        if isinstance(event, TenantSuspended):
            tenant.suspended = True
            if self.caught_up:
                log.info("tenant suspended: its messages are held",
                         extra={"tenant_id": str(envelope.tenant_id)})  # fmt: skip
            return
        if isinstance(event, TenantReactivated):
            tenant.suspended = False
            if self.caught_up:
                log.info("tenant reactivated: %d conversations' messages go out", len(tenant.held),
                         extra={"tenant_id": str(envelope.tenant_id)})  # fmt: skip
            self.waiting |= tenant.held
            tenant.held.clear()
            return
        if isinstance(event, AgentConfigured):
            tenant.window_template = event.settings.template("window_closed")
            return
        if not isinstance(event, CONVERSATION_EVENTS):
            return
        cid = event.conversation_id
        known = self.conversations.get(cid)
        if known is None:
            known = self.conversations[cid] = _Conversation(envelope.tenant_id,
                                                            conv.Conversation(cid))  # fmt: skip
        known.state = conv.evolve(known.state, event)
        match event:
            case OutboundMessageRequested():
                known.queue.append(event)
                self.waiting.add(cid)
            case OutboundMessageSent() | OutboundMessageFailed() | OutboundMessageBlocked():
                done = event.outbound_id
                known.submitted.discard(done)
                if any(request.outbound_id == done for request in known.queue):
                    known.queue = deque(r for r in known.queue if r.outbound_id != done)
            case _:
                pass

    def pending(self) -> int:
        return sum(len(c.queue) for c in self.conversations.values())

    name: str = "sender"

    def caught_up_with_log(self) -> None:
        self.caught_up = True
        log.info("sender caught up with the log; %d messages to send", self.pending())

    async def tick(self) -> None:
        self.start_ready()

    # -- sending ---------------------------------------------------------------------------

    def start_ready(self) -> None:
        """One task per conversation with messages waiting and none running; a suspended
        tenant's conversations are set aside until its reactivation."""
        for cid in list(self.waiting):
            known = self.conversations[cid]
            if not known.queue:
                self.waiting.discard(cid)
                continue
            if cid in self.running or not _next(known):
                continue
            tenant = self.tenants[known.tenant_id]
            if tenant.suspended:
                self.waiting.discard(cid)
                tenant.held.add(cid)
                continue
            self.running.add(cid)
            task = asyncio.create_task(self._drain(cid, known))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drain(self, cid: str, known: _Conversation) -> None:
        try:
            while (request := _next(known)) is not None:
                try:
                    result = await self._deliver(known, request)
                except _GiveUp as gave_up:
                    result = _Result("failed", code=gave_up.code, detail=gave_up.detail)
                if isinstance(result, _Held):
                    return  # still queued and waiting: the next tick sets it aside
                await self._record(known, request, result)
                known.submitted.add(request.outbound_id)
        except Exception:
            log.exception("sender failed on a message; it will be retried",
                          extra={"tenant_id": str(known.tenant_id)})  # fmt: skip
            await asyncio.sleep(_PRODUCE_RETRY_S)
        finally:
            self.running.discard(cid)

    async def _deliver(
        self, known: _Conversation, request: OutboundMessageRequested
    ) -> _Result | _Held:
        tenant_id, oid = known.tenant_id, request.outbound_id
        rows = await self.ledger.parts(tenant_id, oid)
        plan = self._plan(known, request, rows)
        if isinstance(plan, Blocked):
            return _Result("blocked", reason=plan.reason, detail=plan.detail)
        api = self._api(tenant_id)
        texts: tuple[str | None, ...] = plan.parts if plan.content_sid is None else (None,)
        sids: list[str] = []
        for part, text in enumerate(texts):
            row = rows.get(part)
            if row is not None and row.state == "failed":
                return _Result("failed", tuple(sids), code=row.error_code or "unknown")
            outcome = await self._part(known, request, api, plan, part, text, row)
            if isinstance(outcome, _Held):
                return outcome
            if isinstance(outcome, Blocked):
                return _Result("blocked", reason=outcome.reason, detail=outcome.detail)
            if isinstance(outcome, Refused):
                return _Result("failed", tuple(sids), code=outcome.code, detail=outcome.detail)
            sids.append(outcome)
        return _Result("sent", tuple(sids), content_sid=plan.content_sid)

    def _plan(
        self, known: _Conversation, request: OutboundMessageRequested, rows: dict[int, Part]
    ) -> SendPlan | Blocked:
        """The policy check while nothing can have gone out; once a part was sent (or may have
        been), the plan of that attempt (a message half sent is finished, not blocked)."""
        template = self.tenants[known.tenant_id].window_template
        if any(row.state in ("sent", "attempting") for row in rows.values()):
            sid = rows[min(rows)].content_sid
            if sid is None:
                return SendPlan(parts=split_body(request.body or ""))
            variables = request.content_variables if sid == request.content_sid else (
                template.variables if template is not None and template.content_sid == sid
                else {}
            )  # fmt: skip
            return SendPlan(content_sid=sid, content_variables=dict(variables))
        state = known.state
        return plan_send(request, opted_out=state.opted_out, state=state.state,
                         window_open_until=state.window_open_until, now=self.now(),
                         window_template=template)  # fmt: skip

    async def _part(
        self, known: _Conversation, request: OutboundMessageRequested, api: TwilioMessages,
        plan: SendPlan, part: int, text: str | None, row: Part | None,
    ) -> str | Refused | Blocked | _Held:  # fmt: skip
        """The SID of this part, sent now or found sent; Twilio's refusal; or, while nothing of
        the message has gone out, the policy's block (re-checked before every retry: a contact
        can opt out while Twilio throttles us) or the tenant's suspension (checked right before
        every call of a first part; a message half sent, a long text, is finished)."""
        tenant_id, oid = known.tenant_id, request.outbound_id
        if row is not None and row.state == "sent" and row.message_sid is not None:
            return row.message_sid
        if row is not None and row.state == "attempting":
            found = await self._reconcile(known, request, part, text, row.attempt_started_at)
            if found is not None:
                return found
        failures = throttled = 0
        while True:
            if part == 0 and (failures or throttled):
                again = self._plan(known, request, {})
                if isinstance(again, Blocked):
                    return again
            await self.per_sender.wait((tenant_id, request.sender))
            await self.per_recipient.wait((tenant_id, request.contact))
            async with self.in_flight:
                if part == 0 and self.tenants[tenant_id].suspended:
                    return HELD
                # Whatever this attempt does is over by `started` + the timeout: a later lookup
                # (ADR 0015) counts its settle time from there, in this run or the next.
                started = self.now()
                deadline = asyncio.get_running_loop().time() + self.options.timeout_s
                if not await self.ledger.begin(
                    tenant_id, oid, part, recipient=request.contact, sender=request.sender,
                    body=text, content_sid=plan.content_sid, at=started,
                ):  # fmt: skip
                    raise RuntimeError(f"ledger row {oid}/{part} is not free to attempt")
                outcome = await api.create(
                    to=request.contact, from_=request.sender, status_callback=self._callback(
                        tenant_id), body=text, content_sid=plan.content_sid,
                    content_variables=(orjson.dumps(plan.content_variables).decode()
                                       if plan.content_variables else None),
                    deadline=deadline,
                )  # fmt: skip
            match outcome:
                case Created():
                    await self.ledger.finish(tenant_id, oid, part, "sent",
                                             message_sid=outcome.sid, at=self.now())  # fmt: skip
                    return outcome.sid
                case Refused():
                    await self.ledger.finish(tenant_id, oid, part, "failed",
                                             error_code=outcome.code, at=self.now())  # fmt: skip
                    return outcome
                case NotSent():
                    throttled += 1
                    await self.ledger.finish(tenant_id, oid, part, "not_sent", at=self.now())
                    log.warning("Twilio did not take a message (%s); retrying", outcome.code,
                                extra=_extra(tenant_id, oid))  # fmt: skip
                    await asyncio.sleep(self._backoff(throttled))
                case Unknown():
                    failures += 1
                    log.warning("no answer from Twilio for a message (%s); reconciling",
                                outcome.detail, extra=_extra(tenant_id, oid))  # fmt: skip
                    # The settle time counts from when the call gave up (by its deadline).
                    found = await self._reconcile(known, request, part, text, started,
                                                  returned=self.now())  # fmt: skip
                    if found is not None:
                        return found
                    if failures >= self.options.max_attempts:
                        raise _GiveUp("retries_exhausted", outcome.detail)
                    await asyncio.sleep(self._backoff(failures))

    async def _reconcile(
        self, known: _Conversation, request: OutboundMessageRequested, part: int,
        text: str | None, started: datetime, returned: datetime | None = None,
    ) -> str | None:  # fmt: skip
        """After an ambiguous attempt: the SID if Twilio has the message (the ledger is
        completed with it), else None (the row is freed for a new attempt). A lookup Twilio
        keeps refusing (credentials revoked, a key that may not list) ends the message as
        failed `unverified` after `LOOKUP_ATTEMPTS`: never sent again while it may exist."""
        tenant_id, oid = known.tenant_id, request.outbound_id
        settled = returned or started + timedelta(seconds=self.options.timeout_s)
        wait = (settled - self.now()).total_seconds() + self.options.settle_s
        if wait > 0:
            await asyncio.sleep(wait)  # the call may still be in progress at Twilio until then
        lookups = 0
        while True:
            try:
                api = self._api(tenant_id)  # a rotated token applies to the next lookup
                candidates = await api.candidates(to=request.contact, from_=request.sender,
                                                  since=started, body=text)  # fmt: skip
                break
            except _GiveUp:
                raise
            except Exception as exc:  # noqa: BLE001 - unanswered: nothing decided; ask again
                lookups += 1
                log.warning("could not look a message up at Twilio (%s); retrying",
                            type(exc).__name__, extra=_extra(tenant_id, oid))  # fmt: skip
                if lookups >= LOOKUP_ATTEMPTS:
                    raise _GiveUp("unverified", "Twilio could not be asked whether an unanswered "
                                  f"call created the message ({type(exc).__name__}); it is "
                                  "not sent again") from None  # fmt: skip
                await asyncio.sleep(self._backoff(lookups))
        known_sids = await self.ledger.known(tenant_id, candidates) if candidates else set()
        found = next((sid for sid in candidates if sid not in known_sids), None)
        if found is not None:
            await self.ledger.finish(tenant_id, oid, part, "sent", message_sid=found,
                                     at=self.now())  # fmt: skip
            log.info("an unanswered send had reached Twilio; not sent again",
                     extra=_extra(tenant_id, oid))  # fmt: skip
        else:
            await self.ledger.finish(tenant_id, oid, part, "not_sent", at=self.now())
        return found

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.options.backoff_max_s, self.options.backoff_s * 2.0 ** max(failures, 0))
        return ceiling / 2 + random.random() * ceiling / 2  # noqa: S311 - jitter, not secrecy

    def _callback(self, tenant_id: UUID) -> str:
        return f"{self.options.public_url.rstrip('/')}/v1/tenants/{tenant_id}/twilio/status"

    def _api(self, tenant_id: UUID) -> TwilioMessages:
        api = self.clients.get(tenant_id)
        if api is None:
            tenant = self.tenants[tenant_id]
            if tenant.account_sid is None or tenant.token_encrypted is None:
                raise _GiveUp("no_credentials", "the tenant has no Twilio credentials")
            try:
                token = decrypt_secret(self.secret_key, tenant.token_encrypted, tenant_id)
            except SecretError as exc:
                raise _GiveUp("no_credentials", f"cannot decrypt the auth token: {exc}") from None
            api = self.clients[tenant_id] = TwilioMessages.for_account(
                self.http, tenant.account_sid, token
            )
        return api

    async def _record(
        self, known: _Conversation, request: OutboundMessageRequested, result: _Result
    ) -> None:
        tenant_id, oid = known.tenant_id, request.outbound_id
        command = RecordSendResult(
            conversation_id=request.conversation_id, outbound_id=oid, outcome=result.outcome,
            message_sids=list(result.sids), content_sid=result.content_sid,
            error_code=result.code, error_message=result.detail[:1000], reason=result.reason,
            detail=result.detail[:1000] if result.outcome == "blocked" else "",
        )  # fmt: skip
        await submit(self.producer, tenant_id, uuid5(tenant_id, f"send:{oid}"), command,
                     self.now(), _PRODUCE_RETRY_S)  # fmt: skip
        log.info("outbound message %s", result.outcome, extra=_extra(tenant_id, oid))


def _next(known: _Conversation) -> OutboundMessageRequested | None:
    for request in known.queue:
        if request.outbound_id not in known.submitted:
            return request
    return None


def _extra(tenant_id: UUID, outbound_id: str) -> dict[str, str]:
    return {"tenant_id": str(tenant_id), "outbound_id": outbound_id}


async def run_sender(
    bootstrap_servers: str,
    database_url: str,
    secret_key: bytes,
    options: SenderOptions,
    stop: asyncio.Event,
    topic: str = EVENTS,
    grace_s: float = 8.0,
) -> None:
    """Send until `stop` is set; in-flight sends get a moment to finish, then are cancelled
    (their ledger rows stay `attempting` and are reconciled at the next start). A what-if
    run's shadow topic is refused: nothing decided there may ever reach a customer."""
    if is_shadow(topic):
        raise ValueError(f"the sender never reads a shadow topic ({topic})")
    work = _serve(bootstrap_servers, database_url, secret_key, options, stop, topic)
    await stop_within(work, stop, grace_s, "sender")


async def _serve(
    bootstrap_servers: str,
    database_url: str,
    secret_key: bytes,
    options: SenderOptions,
    stop: asyncio.Event,
    topic: str,
) -> None:
    producer = kafka.producer(bootstrap_servers)
    consumer = kafka.groupless_consumer(bootstrap_servers, max_partition_fetch_bytes=1 << 20)
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=min(20, options.max_in_flight + 2), reset=keep_session
    )
    http = HttpxTwilioClient(options.twilio_api_url, options.timeout_s, options.max_in_flight)
    await producer.start()
    await consumer.start()
    sender = Sender(producer, Ledger(pool), http, secret_key, options)
    try:
        await follow(consumer, topic, stop, sender, _TICK_S)
        if sender.tasks:
            await asyncio.wait(sender.tasks, timeout=5.0)
    finally:
        for task in sender.tasks:
            task.cancel()
        await consumer.stop()
        await producer.stop()
        await http.close()
        await pool.close()
