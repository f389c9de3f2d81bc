"""The per-tenant sequence and hash chain: sealing, and detecting every kind of damage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.chain import GENESIS, compute_hash, head_of, seal, verify_chain
from events.envelope import EventDraft, decode_event, encode_event, to_json_bytes
from tests.builders import chain, draft

pytestmark = pytest.mark.unit
TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_seal_numbers_and_links_events_from_genesis() -> None:
    first, second = chain(TENANT, 2)
    assert (first.tenant_seq, first.prev_hash) == (1, GENESIS.hash)
    assert (second.tenant_seq, second.prev_hash) == (2, first.hash)
    assert first.hash == compute_hash(first) != second.hash


def test_sealing_is_deterministic() -> None:
    assert seal(draft(TENANT, 1), GENESIS) == seal(draft(TENANT, 1), GENESIS)


@given(st.integers(min_value=1, max_value=40))
def test_an_intact_chain_verifies(count: int) -> None:
    verifier = verify_chain(chain(TENANT, count))
    assert verifier.ok
    assert (verifier.accepted, verifier.head.tenant_seq) == (count, count)


@given(st.integers(min_value=2, max_value=30), st.data())
def test_a_tampered_payload_is_detected_at_its_sequence(count: int, data: st.DataObject) -> None:
    events = chain(TENANT, count)
    victim = data.draw(st.integers(min_value=0, max_value=count - 1))
    payload = {**events[victim].payload, "reason": "altered after the fact"}
    events[victim] = events[victim].model_copy(update={"payload": payload})
    verifier = verify_chain(events)
    assert [(i.kind, i.tenant_seq) for i in verifier.issues][:1] == [("tampered", victim + 1)]


@given(st.integers(min_value=3, max_value=30), st.data())
def test_a_dropped_event_is_a_gap(count: int, data: st.DataObject) -> None:
    events = chain(TENANT, count)
    missing = data.draw(st.integers(min_value=0, max_value=count - 2))
    del events[missing]
    verifier = verify_chain(events)
    assert [(i.kind, i.tenant_seq) for i in verifier.issues] == [("gap", missing + 2)]
    assert f"{missing + 1}..{missing + 1}" in verifier.issues[0].detail


@given(st.integers(min_value=2, max_value=20), st.data())
def test_exact_duplicates_are_counted_not_defects(count: int, data: st.DataObject) -> None:
    events = chain(TENANT, count)
    again = data.draw(st.lists(st.integers(min_value=0, max_value=count - 1), max_size=5))
    verifier = verify_chain(events + [events[i] for i in again])
    assert verifier.ok
    assert verifier.duplicates == len(again)


def test_a_different_event_at_an_existing_sequence_is_a_fork() -> None:
    events = chain(TENANT, 3)
    rival = seal(draft(TENANT, 99, note="rival"), head_of(events[0]))
    verifier = verify_chain([*events, rival])
    assert [(i.kind, i.tenant_seq) for i in verifier.issues] == [("fork", 2)]


def test_a_rehashed_forgery_still_breaks_the_link() -> None:
    events = chain(TENANT, 3)
    forged = events[1].model_copy(update={"payload": {**events[1].payload, "reason": "forged"}})
    forged = forged.model_copy(update={"hash": compute_hash(forged)})
    verifier = verify_chain([events[0], forged, events[2]])
    assert [(i.kind, i.tenant_seq) for i in verifier.issues] == [("broken_link", 3)]


def test_reordered_events_are_reported() -> None:
    events = chain(TENANT, 4)
    verifier = verify_chain([events[0], events[2], events[1], events[3]])
    assert not verifier.ok
    assert {i.kind for i in verifier.issues} == {"gap", "fork"}


def test_the_decider_refuses_to_rebuild_on_top_of_a_gap() -> None:
    from streams.tenant_book import ChainBroken, TenantBook

    book = TenantBook(TENANT)
    events = chain(TENANT, 3)
    assert book.apply(events[0])
    assert not book.apply(events[0])  # a duplicate is skipped
    with pytest.raises(ChainBroken, match="does not follow seq 1"):
        book.apply(events[2])
    assert book.head.tenant_seq == 1


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [
                UTC,
                timezone(timedelta(0)),
                timezone(timedelta(hours=-3)),
                timezone(timedelta(hours=5, minutes=30)),
            ]
        ),
    )
)
def test_sealed_bytes_are_the_models_json_whatever_the_instant(instant: datetime) -> None:
    """`seal` dumps the draft's own values with orjson; they must equal pydantic's JSON mode."""
    base = draft(TENANT, 1)
    moved = EventDraft.model_validate({**base.__dict__, "occurred_at": instant,
                                        "recorded_at": instant})  # fmt: skip
    envelope = seal(moved, GENESIS)
    assert envelope.hash == compute_hash(envelope)
    assert encode_event(envelope)[1] == to_json_bytes(envelope)
    assert decode_event(to_json_bytes(envelope)) == envelope
