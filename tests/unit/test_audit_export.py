"""Audit replay's core without a broker: the chain check while streaming, filters, exports and
their offline checks (`zapflow verify` and the third-party script of docs/audit.md), time travel.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from events.chain import ChainHead, carries_its_hash, compute_hash, hash_of_fields, head_of, seal
from events.envelope import decode_event, encode_event
from streams.audit_export import ExportLines, manifest, manifest_path, verify_export
from streams.replay import Fields, Replay, Selection
from streams.tenant_book import TenantBook
from streams.time_travel import AsOf, ConversationAsOf
from tests.audit_history import ListSource, documented_script, records, story
from tests.builders import draft

pytestmark = pytest.mark.unit
TENANT = uuid.UUID("00000000-0000-4000-8000-00000000a0d1")
OTHER = uuid.UUID("00000000-0000-4000-8000-00000000b0d2")
CREATED = datetime(2026, 12, 1, tzinfo=UTC)


async def replay(source: ListSource, selection: Selection | None = None) -> tuple[Replay, bytes]:
    run, data = await _replay(source, selection)
    return run, data[0]


async def _replay(
    source: ListSource, selection: Selection | None
) -> tuple[Replay, tuple[bytes, str]]:
    run, lines, out = Replay(selection or Selection(TENANT), source), ExportLines(), []
    async for emitted in run.emitted():
        out.append(lines.lines(emitted))
    return run, (b"".join(out), lines.sha256)


async def export(tmp_path: Path, source: ListSource, selection: Selection | None = None) -> Path:
    """Write what `zapflow replay --out` writes: the lines and the manifest."""
    run, (data, sha256) = await _replay(source, selection)
    path = tmp_path / f"export-{uuid.uuid4().hex[:6]}.ndjson"
    path.write_bytes(data)
    manifest_path(path).write_bytes(orjson.dumps(manifest(run, sha256, CREATED)))
    return path


def third_party(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "check.py"
    script.write_text(documented_script())
    return subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


def flipped(value: bytes, at: int, mask: int = 0x01) -> bytes:
    return value[:at] + bytes([value[at] ^ mask]) + value[at + 1 :]


def test_the_documented_script_is_short_and_standard_library_only() -> None:
    script = documented_script()
    code = [line for line in script.splitlines() if line.strip()]
    assert len(code) <= 22
    assert code[0] == "import hashlib, json, sys"
    assert sum(line.startswith(("import", "from")) for line in code) == 1


async def test_an_untampered_history_replays_whole_and_verifies_three_ways(tmp_path: Path) -> None:
    history = story(TENANT)
    run, data = await replay(ListSource(records(history.events)))
    assert run.ok
    assert not run.chain.duplicates
    assert data.splitlines() == history.values  # each line is the record value, byte for byte
    assert (run.first, run.last) == (ChainHead(1, history.events[0].hash),
                                     head_of(history.events[-1]))  # fmt: skip
    path = await export(tmp_path, ListSource(records(history.events)))
    found = verify_export(path)
    assert found.ok, found.problems
    assert found.count == len(history.events)
    checked = third_party(path, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{len(history.events)} events verified"
    # The float the script must not re-format: orjson wrote 0.00001 where Python writes 1e-05.
    assert b'"temperature":0.00001' in path.read_bytes()


@pytest.mark.parametrize("victim", [0, 4, 8])
async def test_any_one_byte_flipped_is_named_by_its_seq(tmp_path: Path, victim: int) -> None:
    """Every byte of one event, flipped in turn: the replay's first finding is that event's
    sequence number, and so is `verify`'s on the export it wrote."""
    history = story(TENANT)
    clean = records(history.events)
    value = clean[victim].value
    seq = victim + 1
    for at in range(len(value)):
        for mask in (0x01, 0x40):
            damaged = list(clean)
            damaged[victim] = dataclasses.replace(clean[victim], value=flipped(value, at, mask))
            run, _ = await replay(ListSource(damaged))
            assert not run.ok, (at, mask)
            first = run.chain.issues[0]
            assert (first.tenant_seq, first.where) == (seq, f"partition 0 offset {victim}"), (
                at, mask, str(first),
            )  # fmt: skip
            assert first.kind in {"tampered", "unreadable", "foreign"}
            if at % 37 == 0 and mask == 0x01:
                path = await export(tmp_path, ListSource(damaged))
                problems = verify_export(path).problems
                lines = [str(p) for p in problems if p.where.startswith("line")]
                # An unreadable record is not written: then the export lacks that very seq.
                assert lines[0].startswith(f"tampered: seq {seq} ") or (
                    f"sequence numbers {seq}..{seq} are missing" in lines[0]
                ), (at, lines)


async def test_a_tampered_export_fails_zapflow_verify_and_the_script_at_its_seq(
    tmp_path: Path,
) -> None:
    history = story(TENANT)
    path = await export(tmp_path, ListSource(records(history.events)))
    lines = path.read_bytes().splitlines(keepends=True)
    victim = 8  # seq 9: the second question
    at = lines[victim].index(b"Quero falar")
    lines[victim] = flipped(lines[victim], at)
    path.write_bytes(b"".join(lines))
    found = verify_export(path)
    assert not found.ok
    assert str(found.problems[0]).startswith("tampered: seq 9 at line 9")
    assert any(p.kind == "mismatch" and "sha256" in p.detail for p in found.problems)
    checked = third_party(path, tmp_path)
    assert checked.returncode != 0
    assert "line 9, seq 9: the content does not match its hash" in checked.stderr
    # Dropping a line instead: the script and verify both see the broken run.
    path.write_bytes(b"".join(lines[:victim] + lines[victim + 1 :]))
    assert str(verify_export(path).problems[0]).startswith("gap: seq 10 at line 9")
    assert "line 9, seq 10: does not follow seq 8" in third_party(path, tmp_path).stderr


async def test_duplicates_are_benign_and_written_once_forks_and_gaps_are_not() -> None:
    history = story(TENANT)
    clean = records(history.events)
    again = dataclasses.replace(clean[3], offset=len(clean))
    run, data = await replay(ListSource([*clean, again]))
    assert run.ok
    assert [str(d) for d in run.chain.duplicates] == [
        f"duplicate: seq 4 at partition 0 offset {len(clean)}: repeats the event at "
        "partition 0 offset 3"
    ]
    assert data.splitlines() == history.values

    gap, _ = await replay(ListSource(clean[:2] + clean[3:]))
    assert [(i.kind, i.tenant_seq) for i in gap.chain.issues] == [("gap", 4)]
    assert (
        "3..3 are missing (after the event at partition 0 offset 1)" in gap.chain.issues[0].detail
    )

    # Another event sealed at seq 4's place: a fork, both places named.
    other = seal(draft(TENANT, 99, "forged"), ChainHead(3, history.events[2].hash))
    forked = [*clean, *records([other])]
    forked[-1] = dataclasses.replace(forked[-1], offset=len(clean))
    fork, _ = await replay(ListSource(forked))
    assert [str(i) for i in fork.chain.issues] == [
        f"fork: seq 4 at partition 0 offset {len(clean)}: a different event already holds seq 4 "
        "(at partition 0 offset 3)"
    ]


async def test_a_sequence_number_far_ahead_is_a_gap_not_a_memory_blowup() -> None:
    history = story(TENANT)
    far = seal(draft(TENANT, 7, "far"), ChainHead(10**15, history.events[-1].hash))
    run, data = await replay(ListSource([*records(history.events), *records([far])]))
    assert [(i.kind, i.tenant_seq) for i in run.chain.issues] == [("gap", 10**15 + 1)]
    assert len(data.splitlines()) == len(history.events) + 1


async def test_another_tenants_event_is_never_emitted_even_under_this_tenants_key() -> None:
    mine, theirs = story(TENANT), story(OTHER)
    stray = dataclasses.replace(records(theirs.events)[2], key=str(TENANT).encode(), offset=99)
    run, data = await replay(ListSource([*records(mine.events), stray]))
    assert all(orjson.loads(line)["tenant_id"] == str(TENANT) for line in data.splitlines())
    assert [(i.kind, i.tenant_seq) for i in run.chain.issues] == [("foreign", 3)]


async def test_filters_choose_what_is_written_not_what_is_checked(tmp_path: Path) -> None:
    history = story(TENANT)
    by_type = Selection(TENANT, types=frozenset({"AgentReplied", "InboundMessageReceived"}))
    run, data = await replay(ListSource(records(history.events)), by_type)
    assert [orjson.loads(v)["type"] for v in data.splitlines()] == [
        "InboundMessageReceived", "AgentReplied", "InboundMessageReceived", "AgentReplied",
    ]  # fmt: skip
    assert run.chain.head_seq == len(history.events)  # the whole chain was checked
    # A conversation by id or by contact; the tenant's own stream is not part of it.
    for name in (history.conversation_id(), "whatsapp:+5511987654321"):
        _, data = await replay(ListSource(records(history.events)), Selection(TENANT, name))
        streams = {orjson.loads(v)["stream"] for v in data.splitlines()}
        assert streams == {f"conversation:{history.conversation_id()}"}
    # A time range is one run of sequence numbers, still linked: verify and the script agree.
    since = history.events[5].recorded_at
    until = history.events[9].recorded_at
    window = Selection(TENANT, since=since, until=until)
    _, data = await replay(ListSource(records(history.events)), window)
    # seq 6 shares its command's instant with seq 5, seq 10 with 11 and 12
    assert [orjson.loads(v)["tenant_seq"] for v in data.splitlines()] == [5, 6, 7, 8, 9]
    for selection in (by_type, window, Selection(TENANT, since=since + timedelta(days=9))):
        path = await export(tmp_path, ListSource(records(history.events)), selection)
        assert verify_export(path).ok, verify_export(path).problems
        assert third_party(path, tmp_path).returncode == 0, third_party(path, tmp_path).stderr


def test_the_byte_check_is_the_recipes_verdict() -> None:
    """`carries_its_hash` hashes the record bytes with the hash cut out; for any value that is
    not the sealed bytes it falls back to the recipe, so it agrees with `compute_hash`."""
    for envelope in story(TENANT).events:
        value = encode_event(envelope)[1]
        fields = orjson.loads(value)
        assert carries_its_hash(fields, value)
        assert compute_hash(decode_event(value)) == fields["hash"] == hash_of_fields(fields)
        cut_short = value[: value.index(b',"hash":"') + 20]  # bytes that end inside the hash
        assert carries_its_hash(fields, cut_short)  # no IndexError: the recipe judges `fields`
        spaced = orjson.dumps(fields, option=orjson.OPT_INDENT_2)  # same fields, other bytes
        assert carries_its_hash(orjson.loads(spaced), spaced)
        for name, altered in (("hash", "f" * 64), ("prev_hash", "e" * 64), ("stream", "x")):
            changed = {**fields, name: altered}
            assert not carries_its_hash(changed, orjson.dumps(changed, option=orjson.OPT_SORT_KEYS))


async def test_a_tampered_timestamp_is_reported_not_a_crash() -> None:
    """A naive `recorded_at` cannot be compared with an aware instant: the time window and time
    travel treat it as damaged, and the chain check names the event."""
    history = story(TENANT)
    damaged = records(history.events)
    naive = damaged[4].value.replace(b'"recorded_at":"2026-11-02T09:04:00Z"',
                                     b'"recorded_at":"2026-11-02T09:04:00"')  # fmt: skip
    damaged[4] = dataclasses.replace(damaged[4], value=naive)
    window = Selection(TENANT, since=history.events[1].recorded_at)
    run, data = await replay(ListSource(damaged), window)
    assert [(i.kind, i.tenant_seq) for i in run.chain.issues] == [("tampered", 5)]
    assert len(data.splitlines()) == len(history.events) - 1  # from seq 2 on
    folder = ConversationAsOf(history.conversation_id(), AsOf.parse("2026-11-02T09:05:00Z"))
    for value in data.splitlines():
        folder.fold(orjson.loads(value))
    assert folder.report()["as_of"]["tenant_seq"] == 7  # seq 7 was recorded at 09:05 itself


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        Selection(TENANT, types=frozenset({"InboundMesageReceived"}))


async def fold(events: list[Fields], cid: str, as_of: AsOf) -> ConversationAsOf:
    folder = ConversationAsOf(cid, as_of)
    for fields in events:
        folder.fold(fields)
    return folder


async def test_time_travel_rederives_the_deciders_state_at_every_seq() -> None:
    """Deterministic replay: folding the recorded turns gives exactly the decider's state at
    every point of the history, with no model anywhere in reach."""
    history = story(TENANT)
    run = Replay(Selection(TENANT), ListSource(records(history.events)))
    emitted = [orjson.loads(v) async for batch in run.emitted() for v in batch]
    cid = history.conversation_id()
    for seq in range(1, len(history.events) + 1):
        book = TenantBook(TENANT)
        for envelope in history.events[:seq]:
            book.apply(envelope)
        folder = await fold(emitted, cid, AsOf(str(seq), seq=seq))
        assert folder.state == book.conversations.get(cid, folder.state), seq
        settings = book.profile.agent if book.profile else None
        assert (folder.agent[1] if folder.agent else None) == settings, seq


async def test_time_travel_before_the_hand_off_and_now() -> None:
    history = story(TENANT)
    run = Replay(Selection(TENANT), ListSource(records(history.events)))
    emitted = [orjson.loads(v) async for batch in run.emitted() for v in batch]
    cid = history.conversation_id()
    before = history.seq_of("HandoffRequested") - 1
    then = (await fold(emitted, cid, AsOf.parse(str(before)))).report()
    now = (await fold(emitted, cid, AsOf.parse(str(len(history.events))))).report()
    assert (then["as_of"]["tenant_seq"], now["as_of"]["tenant_seq"]) == (before, 13)
    assert then["conversation"]["state"] == "bot"
    assert now["conversation"]["state"] == "human"
    assert then["agent_config"]["settings"]["system_prompt"] == "Você é a assistente v2."
    assert then["last_messages"][-1]["outcome"] is None  # requested, not sent (yet)
    assert now["last_turn"]["tool_calls"][0]["name"] == "handoff_to_human"
    assert [m["body"] for m in now["last_messages"]][-2:] == [
        "Quero falar com uma pessoa", "Vou chamar alguém da equipe.",
    ]  # fmt: skip
    assert now["last_messages"][1]["outcome"] == "sent"
    # By instant: just before the second agent settings were recorded, v1 was in force.
    v2_at = [e for e in history.events if e.type == "AgentConfigured"][1].recorded_at
    early = await fold(emitted, cid, AsOf.parse((v2_at - timedelta(seconds=1)).isoformat()))
    assert early.report()["as_of"]["tenant_seq"] == 7
    assert early.report()["agent_config"]["settings"]["system_prompt"] == "Você é a assistente v1."
    assert early.report()["last_turn"]["reply"] == "Das 8h às 18h."
    assert early.report()["conversation"]["window_open"] is True
