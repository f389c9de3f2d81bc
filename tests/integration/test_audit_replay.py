"""Audit replay against the real broker and PostgreSQL, through `zapflow replay|verify` and the
API: a mixed log of ten tenants, one byte flipped on the log and in the archive, duplicates,
time travel with the model unreachable, and `GET /v1/audit/events`."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from events.envelope import EventEnvelope, encode_event
from projections import archive, tenants
from projections.migrations import migrate
from streams.log import append
from streams.replay import tenant_partition
from streams.topics import EVENTS
from tests.audit_history import History, api_key, documented_script, story
from tests.integration.test_reprocess import cli
from tests.integration.twilio_driver import app_client

pytestmark = pytest.mark.integration
PARTITIONS = 12


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bootstrap_servers: str) -> None:
    """The command's settings: the session broker, no database, no running `zapflow up`."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ZAPFLOW_STATE_DIR", str(tmp_path / "state"))


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, bytes, str]:
    """`zapflow ARGV`: exit code, stdout (bytes: NDJSON is compared byte for byte), stderr."""
    code, out, err = await cli(capsys, *argv)
    return code, out.encode(), err


def third_party(path: Path) -> subprocess.CompletedProcess[str]:
    script = path.with_name("check.py")
    script.write_text(documented_script())
    return subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


def stories(count: int) -> list[History]:
    return [story(uuid.uuid4()) for _ in range(count)]


def interleaved(histories: list[History]) -> Iterator[EventEnvelope]:
    """Tenants' events mixed as the decider would append them: round robin, each in order."""
    longest = max(len(h.events) for h in histories)
    for index in range(longest):
        for history in histories:
            if index < len(history.events):
                yield history.events[index]


async def produce_raw(producer: AIOKafkaProducer, topic: str, events: list[EventEnvelope],
                      values: dict[int, bytes]) -> dict[int, tuple[int, int]]:  # fmt: skip
    """Append `events`, with `values[index]` in place of an event's value; → index: position."""
    positions = {}
    for index, envelope in enumerate(events):
        key, value, headers = encode_event(envelope)
        sent = await producer.send_and_wait(topic, values.get(index, value), key=key,
                                            headers=headers)  # fmt: skip
        positions[index] = (sent.partition, sent.offset)
    return positions


def flip(value: bytes, needle: bytes) -> bytes:
    at = value.index(needle)
    return value[:at] + bytes([value[at] ^ 0x01]) + value[at + 1 :]


@pytest.mark.usefixtures("cli_env")
async def test_one_tenant_of_a_mixed_log_and_nothing_else(
    capsys: pytest.CaptureFixture[str], producer: AIOKafkaProducer, topic: str, tmp_path: Path
) -> None:
    histories = stories(10)
    await append(producer, list(interleaved(histories)), topic)
    shared = {tenant_partition(h.tenant_id, range(PARTITIONS)) for h in histories}
    assert len(shared) < 10  # some tenants share a partition: the key filter is exercised
    for history in histories:
        out = tmp_path / f"{history.tenant_id}.ndjson"
        code, _, err = await run_cli(capsys, "replay", "--tenant", str(history.tenant_id),
                                     "--topic", topic, "--out", str(out))  # fmt: skip
        assert code == 0, err
        assert out.read_bytes().splitlines() == history.values  # its own, all, byte for byte
        written = orjson.loads(
            (tmp_path / f"{history.tenant_id}.ndjson.manifest.json").read_bytes()
        )
        assert written["chain_head"] == {"tenant_seq": 13, "hash": history.events[-1].hash}
        assert (written["count"], written["verified"], written["source"]["kind"]) == (
            13,
            True,
            "log",
        )
    checked = third_party(tmp_path / f"{histories[0].tenant_id}.ndjson")
    assert (checked.returncode, checked.stdout.strip()) == (0, "13 events verified"), checked.stderr
    code, out_, err = await run_cli(
        capsys, "verify", str(tmp_path / f"{histories[0].tenant_id}.ndjson")
    )
    assert code == 0, err
    assert orjson.loads(out_)["verified"] is True
    # To stdout, filtered: only the conversation's events of the asked-for types.
    code, lines, err = await run_cli(
        capsys, "replay", "--tenant", str(histories[3].tenant_id), "--topic", topic,
        "--conversation", "whatsapp:+5511987654321",
        "--types", "AgentReplied,InboundMessageReceived",
    )  # fmt: skip
    assert code == 0, err
    expected = [
        e for e in histories[3].events if e.type in {"AgentReplied", "InboundMessageReceived"}
    ]
    assert lines.splitlines() == [encode_event(e)[1] for e in expected]


@pytest.mark.usefixtures("cli_env")
async def test_a_flipped_byte_on_the_log_is_named_by_seq_and_offset(
    capsys: pytest.CaptureFixture[str], producer: AIOKafkaProducer, topic: str, tmp_path: Path
) -> None:
    history = story(uuid.uuid4())
    victim = history.seq_of("AgentReplied") - 1  # seq 5: the first answer
    values = {victim: flip(history.values[victim], b"Das 8h")}
    positions = await produce_raw(producer, topic, history.events, values)
    partition, offset = positions[victim]
    out = tmp_path / "tampered.ndjson"
    code, _, err = await run_cli(capsys, "replay", "--tenant", str(history.tenant_id),
                                 "--topic", topic, "--out", str(out))  # fmt: skip
    assert code == 1
    assert f"tampered: seq 5 at partition {partition} offset {offset}" in err
    assert "NOT verified: 1 issue(s)" in err
    code, _, err = await run_cli(capsys, "verify", str(out))
    assert code == 1
    assert "tampered: seq 5 at line 5" in err
    checked = third_party(out)
    assert checked.returncode != 0
    assert "line 5, seq 5: the content does not match its hash" in checked.stderr


@pytest.mark.usefixtures("cli_env")
async def test_duplicates_are_reported_and_benign_a_stray_tenant_is_not(
    capsys: pytest.CaptureFixture[str], producer: AIOKafkaProducer, topic: str
) -> None:
    mine, theirs = story(uuid.uuid4()), story(uuid.uuid4())
    await append(producer, mine.events, topic)
    await append(producer, mine.events[4:6], topic)  # a decider re-appending after a crash
    code, lines, err = await run_cli(capsys, "replay", "--tenant", str(mine.tenant_id),
                                     "--topic", topic)  # fmt: skip
    assert code == 0, err
    assert lines.splitlines() == mine.values
    assert err.count("duplicate: seq") == 2
    assert "2 duplicate(s)" in err
    # Another tenant's event under this tenant's key: never written, and an issue.
    key = str(mine.tenant_id).encode()
    _, value, headers = encode_event(theirs.events[6])
    await producer.send_and_wait(topic, value, key=key, headers=headers)
    code, lines, err = await run_cli(capsys, "replay", "--tenant", str(mine.tenant_id),
                                     "--topic", topic)  # fmt: skip
    assert code == 1
    assert lines.splitlines() == mine.values
    assert f"foreign: seq 7 at partition {tenant_partition(mine.tenant_id, range(12))}" in err


async def test_the_archive_replays_like_the_log_and_names_a_flipped_byte(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cli_env: None,
    producer: AIOKafkaProducer, topic: str, database_url: str, db: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    await migrate(db)
    monkeypatch.setenv("DATABASE_URL", database_url)
    history, noise = story(uuid.uuid4()), story(uuid.uuid4())
    for h in (noise, history):
        positions = await produce_raw(producer, topic, h.events, {})
        for index, envelope in enumerate(h.events):
            partition, offset = positions[index]
            key, value, headers = encode_event(envelope)
            await archive.store(
                db, topic, partition, [(offset, key, value, headers, 0)], [envelope]
            )
    from_log, from_archive = tmp_path / "log.ndjson", tmp_path / "archive.ndjson"
    base = ("replay", "--tenant", str(history.tenant_id), "--topic", topic)
    assert (await run_cli(capsys, *base, "--out", str(from_log)))[0] == 0
    code, _, err = await run_cli(capsys, *base, "--source", "archive", "--out", str(from_archive))
    assert code == 0, err
    assert from_archive.read_bytes() == from_log.read_bytes()
    # One byte of one archived row, edited in PostgreSQL.
    row = await db.fetchrow(
        'SELECT partition, "offset", value FROM event_archive '
        "WHERE tenant_id = $1 AND tenant_seq = 9", history.tenant_id,
    )  # fmt: skip
    assert row is not None
    await db.execute('UPDATE event_archive SET value = $1 WHERE topic = $2 AND partition = $3 '
                     'AND "offset" = $4', flip(row["value"], b"Quero"), topic, row["partition"],
                     row["offset"])  # fmt: skip
    code, _, err = await run_cli(capsys, *base, "--source", "archive", "--out", str(from_archive))
    assert code == 1
    assert f"tampered: seq 9 at partition {row['partition']} offset {row['offset']}" in err
    code, _, err = await run_cli(capsys, "verify", str(from_archive))
    assert code == 1
    assert "tampered: seq 9 at line 9" in err


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_time_travel_with_the_model_unreachable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cli_env: None,
    producer: AIOKafkaProducer, topic: str,
) -> None:  # fmt: skip
    """Deterministic replay: an LLM key is set but its server is a closed port, and there is no
    database; the states come from the recorded turns alone."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-unreachable")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    history = story(uuid.uuid4())
    await append(producer, history.events, topic)
    base = ("replay", "--tenant", str(history.tenant_id), "--topic", topic,
            "--conversation", history.conversation_id())  # fmt: skip
    before = history.seq_of("HandoffRequested") - 1
    code, out, err = await run_cli(capsys, *base, "--as-of", str(before))
    assert code == 0, err
    then = orjson.loads(out)
    code, out, err = await run_cli(capsys, *base, "--as-of", "2099-01-01")
    assert code == 0, err
    now = orjson.loads(out)
    assert (then["as_of"]["tenant_seq"], now["as_of"]["tenant_seq"]) == (before, 13)
    assert (then["conversation"]["state"], now["conversation"]["state"]) == ("bot", "human")
    assert then["last_turn"]["reply"] == "Vou chamar alguém da equipe."
    assert then["agent_config"]["settings"]["system_prompt"] == "Você é a assistente v2."
    assert then["chain"] == {"verified": True, "head_seq": 13, "issues": []}
    code, _, err = await run_cli(capsys, *base, "--as-of", "yesterday")
    assert code == 2
    assert "--as-of" in err


async def test_the_audit_endpoint_streams_only_the_keys_tenant(
    fresh_broker: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(db)
    mine, theirs = story(uuid.uuid4()), story(uuid.uuid4())
    producer = AIOKafkaProducer(bootstrap_servers=fresh_broker, acks="all")
    await producer.start()
    try:
        mixed = list(interleaved([mine, theirs]))
        positions = await append(producer, mixed, EVENTS)
    finally:
        await producer.stop()
    for h in (mine, theirs):
        await tenants.apply(db, h.events[0])  # the directory knows their API keys
    for envelope, at in zip(mixed, positions, strict=True):  # and the projector archived them
        key, value, headers = encode_event(envelope)
        await archive.store(db, EVENTS, at.partition, [(at.offset, key, value, headers, 0)],
                            [envelope])  # fmt: skip
    with app_client(fresh_broker, database_url) as client:
        assert client.get("/v1/audit/events").status_code == 401
        for h in (mine, theirs):
            auth = {"Authorization": f"Bearer {api_key(h.tenant_id)}"}
            response = client.get("/v1/audit/events", headers=auth)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            *events, trailer = response.content.splitlines()
            assert events == h.values
            verdict = orjson.loads(trailer)["manifest"]
            assert (verdict["verified"], verdict["count"], verdict["tenant_id"]) == (
                True, 13, str(h.tenant_id),
            )  # fmt: skip
            saved = tmp_path / f"{h.tenant_id}.ndjson"
            saved.write_bytes(response.content)
            from streams.audit_export import verify_export

            assert verify_export(saved).ok, verify_export(saved).problems
        auth = {"Authorization": f"Bearer {api_key(mine.tenant_id)}"}
        archived = client.get("/v1/audit/events", headers=auth, params={"source": "archive"})
        *events, trailer = archived.content.splitlines()
        assert events == mine.values
        assert orjson.loads(trailer)["manifest"]["source"]["kind"] == "archive"
        response = client.get("/v1/audit/events", headers=auth,
                              params={"types": "AgentReplied", "since": "2026-11-02"})  # fmt: skip
        *events, trailer = response.content.splitlines()
        assert [orjson.loads(e)["type"] for e in events] == ["AgentReplied", "AgentReplied"]
        assert orjson.loads(trailer)["manifest"]["filters"]["types"] == ["AgentReplied"]
        bad = client.get("/v1/audit/events", headers=auth, params={"since": "2026-11-02T10:00"})
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_request")
        unknown = client.get("/v1/audit/events", headers=auth, params={"types": "Nope"})
        assert unknown.status_code == 400
