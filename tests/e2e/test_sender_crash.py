"""The sender (`zapflow worker sender`, a real process) SIGKILLed at random points while it sends
500 messages, with Twilio answering slowly or dropping the connection now and then: every message
reaches the emulator once and only once, and the ledger and the log agree with it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from emulator import Fault
from tests.integration.sender_rig import SECRET_KEY_ENV, Rig, contact, live_rig

pytestmark = pytest.mark.e2e
MESSAGES = 500
MAX_KILLS = 8
DEADLINE_S = 240.0


@pytest.fixture
async def rig(fresh_broker: str, database_url: str, db: asyncpg.Connection) -> AsyncIterator[Rig]:
    async with live_rig(fresh_broker, database_url, db) as live:
        yield live


def _start(rig: Rig, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "KAFKA_BOOTSTRAP_SERVERS": rig.brokers, "DATABASE_URL": rig.database_url,
        "ZAPFLOW_SECRET_KEY": SECRET_KEY_ENV, "ZAPFLOW_TWILIO_API_URL": rig.emulator_url,
        "ZAPFLOW_PUBLIC_URL": rig.api_url, "ZAPFLOW_TWILIO_TIMEOUT_S": "1",
        "ZAPFLOW_STATE_DIR": str(state_dir), "NO_PROXY": "127.0.0.1,localhost",
    }  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "zapflow", "worker", "sender"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def _done(rig: Rig) -> int:
    return int(await rig.db.fetchval(
        "SELECT count(*) FROM messages WHERE tenant_id = $1 AND direction = 'outbound' "
        "AND status <> 'requested'", rig.a.tenant.tenant_id,
    ))  # fmt: skip


async def _until_done(rig: Rig, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(int(DEADLINE_S / 0.5)):
        if await _done(rig) >= MESSAGES or loop.time() > deadline:
            return
        await asyncio.sleep(0.5)


async def test_sigkills_at_random_points_never_send_a_message_twice(
    rig: Rig, tmp_path: Path
) -> None:
    emulator = rig.emulator_server.emulator
    requests = [rig.reply(rig.a, contact(n), f"mensagem {n}") for n in range(MESSAGES)]
    await rig.send(*(rig.inbound(rig.a, contact(n)) for n in range(MESSAGES)))
    await rig.send(*(request for request, _ in requests))
    log, rng = tmp_path / "sender.log", random.Random(4)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    kills: list[int] = []  # messages at the emulator when each kill landed
    while await _done(rig) < MESSAGES and loop.time() < deadline:
        # Now and then Twilio creates a message but its answer is late or lost: ambiguous.
        emulator.inject(Fault(kind=rng.choice(["slow", "disconnect"]), delay_s=2.0))
        process = _start(rig, tmp_path / "state", log)
        try:
            if len(kills) < MAX_KILLS:
                await asyncio.sleep(rng.uniform(2.0, 4.0))
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kills.append(len(emulator.received()))
            else:  # the last run goes to the end
                await _until_done(rig, deadline)
                process.send_signal(signal.SIGTERM)
        finally:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert await _done(rig) == MESSAGES, log.read_text()[-3000:]
    # The kills landed mid-stream, not before the first or after the last message.
    assert any(0 < k < MESSAGES for k in kills), kills
    received = emulator.received()
    bodies = Counter(entry["params"]["Body"][-1] for entry in received)
    assert bodies == Counter(f"mensagem {n}" for n in range(MESSAGES)), bodies.most_common(3)
    # The ledger and the log say the same as the emulator: one SID per message, Twilio's own.
    ledger = await rig.db.fetch(
        "SELECT outbound_id, state, message_sid FROM send_ledger WHERE tenant_id = $1",
        rig.a.tenant.tenant_id,
    )
    assert {row["state"] for row in ledger} == {"sent"}
    by_ledger = {row["outbound_id"]: row["message_sid"] for row in ledger}
    assert set(by_ledger) == {oid for _, oid in requests}
    assert set(by_ledger.values()) == {entry["sid"] for entry in received}
    sent = [e for e in await rig.events(rig.a) if e.type == "OutboundMessageSent"]
    by_log = {e.payload["outbound_id"]: e.payload["message_sids"] for e in sent}
    assert len(sent) == MESSAGES
    assert by_log == {oid: [sid] for oid, sid in by_ledger.items()}
