"""What the decider knows of one tenant, folded from the log: chain head, profile, conversations,
its people (users, memberships, keys, registrations) and, for the platform tenant, the e-mail
directory.

`decide` routes a command to the pure decider of its aggregate and seals nothing; `apply` folds
one appended event. The decider shell calls `apply` only after the log acknowledged the event
(ARCHITECTURE §2.3), or while rebuilding from the log.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final
from uuid import UUID, uuid5

from commands import api_keys, directory, memberships, registration, users
from commands import conversation as conv
from commands.agent_config import ConfigureAgent, decide_agent_config
from commands.catalog import COMMAND_REGISTRY
from commands.directory import Directory
from commands.errors import Rejected
from commands.identity import Identity
from commands.identity import evolve as evolve_identity
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.operator import RequestOutboundMessage
from commands.tenant import RegisterTenant, TenantProfile, decide_registration, evolve_registration
from commands.tenant_lifecycle import TENANT_LIFECYCLE_COMMANDS, decide_lifecycle, evolve_lifecycle
from events.catalog import EVENT_REGISTRY
from events.chain import GENESIS, ChainHead, head_of
from events.conversation import CONVERSATION_EVENTS
from events.envelope import CommandEnvelope, EventDraft, EventEnvelope, trusted
from events.identity import IDENTITY_EVENTS
from events.platform import CommandRejected
from events.registration import (
    DIRECTORY_EVENTS,
    DIRECTORY_STREAM,
    PLATFORM_TENANT_ID,
    REGISTRATION_EVENTS,
)
from events.registry import Message
from events.tenant import TENANT_LIFECYCLE_EVENTS, AgentConfigured, Template, TenantRegistered

_IDENTITY_COMMANDS: Final = (
    *TENANT_LIFECYCLE_COMMANDS,
    *users.USER_COMMANDS,
    *memberships.MEMBERSHIP_COMMANDS,
    *api_keys.API_KEY_COMMANDS,
    *registration.REGISTRATION_COMMANDS,
    *directory.DIRECTORY_COMMANDS,
)
_IDENTITY_EVENTS: Final = (*IDENTITY_EVENTS, *REGISTRATION_EVENTS)
# What a suspended tenant may not do: take in customers' messages, or send (a turn's reply).
# (An agent turn is not refused but discarded, with an event: see `conv.Context.suspended`.)
_SUSPENDED_REFUSES: Final = (ReceiveInboundMessage, RequestOutboundMessage)
# Commands re-delivered after a crash are recognised by id for this many recent commands.
RECENT_COMMANDS: Final = 10_000


class ChainBroken(Exception):
    """The log holds a gap or a broken link in a tenant's chain."""


@dataclass(slots=True)
class TenantBook:
    tenant_id: UUID
    head: ChainHead = GENESIS
    profile: TenantProfile | None = None
    conversations: dict[str, conv.Conversation] = field(default_factory=dict)
    identity: Identity = field(default_factory=Identity)
    directory: Directory = field(default_factory=Directory)
    recent_commands: OrderedDict[UUID, None] = field(default_factory=OrderedDict)

    def decide(
        self, command: CommandEnvelope, recorded_at: datetime
    ) -> list[tuple[EventDraft, Message]]:
        """The drafts `command` produces, with their typed events (none if already decided)."""
        if command.command_id in self.recent_commands:
            return []
        body = COMMAND_REGISTRY.decode(command.type, command.schema_version, command.payload)
        stream, events = self._route(body, command, recorded_at)
        # Built without re-validation: every value comes from validated models right here.
        return [
            (
                trusted(
                    EventDraft,
                    {
                        "event_id": uuid5(command.command_id, str(index)),
                        "type": event.type,
                        "schema_version": event.schema_version,
                        "tenant_id": self.tenant_id,
                        "stream": stream,
                        "occurred_at": command.issued_at,
                        "recorded_at": recorded_at,
                        "correlation_id": command.correlation_id,
                        "causation_id": command.command_id,
                        "payload": event.payload(),
                    },
                ),
                event,
            )
            for index, event in enumerate(events)
        ]

    def _route(
        self, body: Message, command: CommandEnvelope, recorded_at: datetime
    ) -> tuple[str, list[Message]]:
        if isinstance(body, RegisterTenant | ConfigureAgent):
            stream = f"tenant:{self.tenant_id}"
            try:
                if isinstance(body, ConfigureAgent):
                    return stream, [decide_agent_config(self.profile, body)]
                self._not_the_platform()
                return stream, [decide_registration(self.profile, body)]
            except Rejected as rejected:
                return stream, [_rejection(command, rejected)]
        if not isinstance(body, conv.CONVERSATION_COMMANDS):  # checked first: the hot path
            if isinstance(body, _IDENTITY_COMMANDS):
                stream = self._identity_stream(body)
                try:
                    return stream, self._decide_identity(body, command.issued_at)
                except Rejected as rejected:
                    return stream, [_rejection(command, rejected)]
            unsupported = Rejected("unsupported_command", f"{body.type} has no handler")
            return f"tenant:{self.tenant_id}", [_rejection(command, unsupported)]
        if isinstance(body, ReceiveInboundMessage | RecordDeliveryStatus):
            cid = conv.conversation_id(self.tenant_id, body.contact)
        else:
            cid = body.conversation_id
        stream = f"conversation:{cid}"
        try:
            self._guard_tenant(body)
            current = self.conversations.get(cid) or conv.Conversation(cid)
            suspended = self.profile is not None and self.profile.suspended
            ctx = conv.Context(
                command.command_id, command.issued_at, recorded_at,
                window_template=self._window_template(), suspended=suspended,
            )  # fmt: skip
            return stream, list(conv.decide(current, body, ctx))
        except Rejected as rejected:
            return stream, [_rejection(command, rejected)]

    def _not_the_platform(self) -> None:
        if self.tenant_id == PLATFORM_TENANT_ID:
            raise Rejected("reserved_tenant_id", "the platform's own id is no tenant's")

    def _identity_stream(self, body: Message) -> str:
        if isinstance(body, users.USER_COMMANDS):
            return f"user:{body.user_id}"
        if isinstance(body, registration.REGISTRATION_COMMANDS):
            return f"registration:{body.registration_id}"
        if isinstance(body, directory.DIRECTORY_COMMANDS):
            return DIRECTORY_STREAM
        return f"tenant:{self.tenant_id}"  # lifecycle, memberships, API keys

    def _decide_identity(self, body: Message, now: datetime) -> list[Message]:
        if isinstance(body, TENANT_LIFECYCLE_COMMANDS):
            return list(decide_lifecycle(self.profile, body))
        if isinstance(body, users.USER_COMMANDS):
            return list(users.decide(self.identity, self.profile, body, now))
        if isinstance(body, memberships.MEMBERSHIP_COMMANDS):
            return list(memberships.decide(self.identity, self.profile, body))
        if isinstance(body, api_keys.API_KEY_COMMANDS):
            return list(api_keys.decide(self.identity, self.profile, body))
        if isinstance(body, registration.REGISTRATION_COMMANDS):
            return list(registration.decide(self.identity, self.tenant_id, self.profile, body))
        if isinstance(body, directory.DIRECTORY_COMMANDS):
            return list(directory.decide(self.directory, self.tenant_id, body))
        raise AssertionError(f"{body.type} is in _IDENTITY_COMMANDS without a decider")

    def _window_template(self) -> Template | None:
        if self.profile is None or self.profile.suspended:
            return None  # a suspended tenant sends nothing, not even a template fallback
        agent = self.profile.agent
        return agent.template("window_closed") if agent is not None else None

    def _guard_tenant(self, body: Message) -> None:
        if self.profile is None:
            raise Rejected("unknown_tenant", "the tenant is not registered")
        # Twilio's reports of what already happened (statuses, send results) are still recorded.
        if self.profile.suspended and isinstance(body, _SUSPENDED_REFUSES):
            raise Rejected("tenant_suspended", "the tenant is suspended")
        if isinstance(body, ReceiveInboundMessage | RecordDeliveryStatus):
            if body.account_sid != self.profile.account_sid:
                raise Rejected("tenant_mismatch", "AccountSid does not belong to this tenant")
            if body.sender not in self.profile.senders:
                raise Rejected("tenant_mismatch", "the sender does not belong to this tenant")

    def apply(self, envelope: EventEnvelope) -> bool:
        """Fold one event from the log; False for a duplicate (already applied).

        Anything but the next link of the chain is refused: deciding on top of a gap or a broken
        link would seal new events onto a history that does not exist.
        """
        if envelope.tenant_seq <= self.head.tenant_seq:
            return False
        if envelope.tenant_seq != self.head.tenant_seq + 1 or envelope.prev_hash != self.head.hash:
            raise ChainBroken(
                f"tenant {self.tenant_id}: event {envelope.event_id} (seq {envelope.tenant_seq}) "
                f"does not follow seq {self.head.tenant_seq}; the log needs repair before this "
                "tenant's commands can be decided"
            )
        event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
        self.record(envelope, event)
        return True

    def record(self, envelope: EventEnvelope, event: Message) -> None:
        """Fold an event whose typed form is at hand (`event` is `envelope`'s payload)."""
        self.head = head_of(envelope)
        self.recent_commands[envelope.causation_id] = None
        if len(self.recent_commands) > RECENT_COMMANDS:
            self.recent_commands.popitem(last=False)
        if isinstance(event, CONVERSATION_EVENTS):  # first: nearly every event is one
            current = self.conversations.get(event.conversation_id)
            current = current or conv.Conversation(event.conversation_id)
            self.conversations[event.conversation_id] = conv.evolve(current, event)
        elif isinstance(event, TenantRegistered):
            self.profile = evolve_registration(event)
        elif isinstance(event, AgentConfigured) and self.profile is not None:
            self.profile = replace(self.profile, agent=event.settings)
        elif isinstance(event, TENANT_LIFECYCLE_EVENTS) and self.profile is not None:
            self.profile = evolve_lifecycle(self.profile, event)
        elif isinstance(event, _IDENTITY_EVENTS):
            self.identity = evolve_identity(self.identity, event)
        elif isinstance(event, DIRECTORY_EVENTS):
            self.directory = directory.evolve(self.directory, event)


def _rejection(command: CommandEnvelope, rejected: Rejected) -> CommandRejected:
    return CommandRejected(
        command_id=str(command.command_id),
        command_type=command.type,
        reason_code=rejected.code,
        reason=rejected.reason,
    )
