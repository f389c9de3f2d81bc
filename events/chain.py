"""The per-tenant sequence and SHA-256 hash chain: computed here and only here, verified purely.

An event's hash is SHA-256 over its predecessor's hash and the canonical bytes of every other
field of the event (sequence and `prev_hash` included), so altering, dropping, inserting or
reordering any event of a tenant is detectable from the events alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import orjson

from events.envelope import EventDraft, EventEnvelope, trusted, with_wire_bytes

GENESIS_HASH: Final = "0" * 64


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a tenant's chain ends: the last sequence number and its hash."""

    tenant_seq: int = 0
    hash: str = GENESIS_HASH


GENESIS: Final = ChainHead()


# Keys sorted; UTC written "Z" as pydantic's JSON mode writes it, so sealing can dump the draft's
# own values (UUIDs, datetimes) and get the bytes `model_dump(mode="json")` would give.
_CANONICAL: Final = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z
_HASH_FIELD: Final = b',"hash":"'
_HASH_FIELD_LENGTH: Final = len(_HASH_FIELD) + 64 + 1  # the hex digest and its closing quote
_QUOTE: Final = ord('"')


def _digest(prev_hash: str, body: dict[str, object]) -> str:
    canonical = orjson.dumps(body, option=_CANONICAL)
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical).hexdigest()


def compute_hash(envelope: EventEnvelope) -> str:
    """The hash `envelope` must carry, recomputed from all of its other fields."""
    return _digest(envelope.prev_hash, envelope.model_dump(mode="json", exclude={"hash"}))


def hash_of_fields(fields: Mapping[str, object]) -> str:
    """The hash an event must carry, from its fields as JSON values (a record value parsed as it
    is, without building an envelope, as the audit replay reads it). Same recipe as
    `compute_hash`, so for every event sealed here the two agree."""
    body = {name: value for name, value in fields.items() if name != "hash"}
    return _digest(str(fields["prev_hash"]), body)


def carries_its_hash(fields: Mapping[str, object], value: bytes) -> bool:
    """Whether the record value `value`, parsed into `fields`, carries the hash its content must.

    A value sealed here is the canonical JSON of every field, so the canonical JSON of all but
    `hash` is the value with `,"hash":"…"` cut out (it never comes first: `causation_id` sorts
    before it); hashing those bytes needs no re-serialising (the audit replay's hot path). Any
    other value is judged by `hash_of_fields`, so the verdict is always the recipe's.
    """
    digest, prev_hash = fields.get("hash"), fields.get("prev_hash")
    if type(digest) is not str or type(prev_hash) is not str:
        return False
    cut = value.find(_HASH_FIELD)
    end = cut + _HASH_FIELD_LENGTH
    if cut > 0 and end <= len(value) and value[end - 1] == _QUOTE:
        # Cutting anything but this event's own `,"hash":"…"` leaves bytes that cannot hash to
        # it (they would contain their own hash); no need to compare the cut-out characters.
        sealed = hashlib.sha256(prev_hash.encode())
        sealed.update(b"\n")
        view = memoryview(value)
        sealed.update(view[:cut])
        sealed.update(view[end:])
        if sealed.hexdigest() == digest:
            return True
    try:
        return hash_of_fields(fields) == digest
    except (KeyError, TypeError):
        return False


def seal(draft: EventDraft, head: ChainHead) -> EventEnvelope:
    """Place `draft` after `head`: assign the next `tenant_seq`, link and hash it.

    On the decider's hot path: the draft is already validated, so the envelope is built without
    validating again, and its fields are dumped as they are, without pydantic's serialiser
    (`test_chain` holds hash and wire bytes equal to the model's JSON mode).
    """
    fields: dict[str, object] = {
        **draft.__dict__, "tenant_seq": head.tenant_seq + 1, "prev_hash": head.hash
    }  # fmt: skip
    fields["hash"] = _digest(head.hash, fields)
    envelope = trusted(EventEnvelope, fields)
    return with_wire_bytes(envelope, orjson.dumps(fields, option=_CANONICAL))


def head_of(envelope: EventEnvelope) -> ChainHead:
    """The chain head after `envelope`."""
    return ChainHead(envelope.tenant_seq, envelope.hash)


type IssueKind = Literal["tampered", "gap", "fork", "broken_link"]


@dataclass(frozen=True, slots=True)
class ChainIssue:
    """One defect in a chain, located by sequence number and (when known) log position."""

    kind: IssueKind
    tenant_seq: int
    event_id: str
    detail: str
    position: str | None = None


@dataclass(slots=True)
class ChainVerifier:
    """Checks one tenant's events in log order; exact duplicates are counted, not defects.

    Duplicates are expected (at-least-once appends re-produce byte-identical events); anything
    else that does not extend the chain by exactly one well-linked, correctly hashed event is an
    issue.
    """

    head: ChainHead = GENESIS
    issues: list[ChainIssue] = field(default_factory=list)
    duplicates: int = 0
    accepted: int = 0
    _seen: dict[int, str] = field(default_factory=dict)

    def feed(self, envelope: EventEnvelope, position: str | None = None) -> bool:
        """Check the next event; True when it extended the chain."""
        seq = envelope.tenant_seq
        if compute_hash(envelope) != envelope.hash:
            self._issue("tampered", envelope, "hash does not match the event's content", position)
            return False
        if seq <= self.head.tenant_seq:
            if self._seen.get(seq) == envelope.hash:
                self.duplicates += 1
            else:
                detail = f"a different event already holds seq {seq}"
                self._issue("fork", envelope, detail, position)
            return False
        if seq > self.head.tenant_seq + 1:
            missing = f"{self.head.tenant_seq + 1}..{seq - 1}"
            self._issue("gap", envelope, f"sequence numbers {missing} are missing", position)
        elif envelope.prev_hash != self.head.hash:
            detail = f"prev_hash does not link to the hash of seq {self.head.tenant_seq}"
            self._issue("broken_link", envelope, detail, position)
        self.head = head_of(envelope)
        self._seen[seq] = envelope.hash
        self.accepted += 1
        return True

    @property
    def ok(self) -> bool:
        return not self.issues

    def _issue(
        self, kind: IssueKind, envelope: EventEnvelope, detail: str, position: str | None
    ) -> None:
        self.issues.append(
            ChainIssue(kind, envelope.tenant_seq, str(envelope.event_id), detail, position)
        )


def verify_chain(envelopes: Iterable[EventEnvelope], start: ChainHead = GENESIS) -> ChainVerifier:
    """Verify one tenant's events, in log order, from `start`; inspect `.ok` and `.issues`."""
    verifier = ChainVerifier(head=start)
    for envelope in envelopes:
        verifier.feed(envelope)
    return verifier
