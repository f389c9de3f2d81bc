"""The sender (`zapflow worker sender`, a real process) SIGKILLed at random points while it sends
500 messages, with Twilio answering slowly or dropping the connection now and then: every message
reaches the emulator once and only once, and the ledger and the log agree with it.

The emulator runs as a process of its own (`zapflow emulator`), as Twilio is a server of its
own: in this test process it would stall whenever the decider or projector here is busy, and a
Twilio that processes a request many seconds after the caller gave up is outside what any
reconciliation can know about (ADR 0015: `ZAPFLOW_TWILIO_SETTLE_S`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration.sender_rig import SECRET_KEY_ENV, Rig, contact, live_rig

pytestmark = pytest.mark.e2e
MESSAGES = 500
MAX_KILLS = 8
DEADLINE_S = 300.0


@pytest.fixture
async def rig(fresh_broker: str, database_url: str, db: asyncpg.Connection) -> AsyncIterator[Rig]:
    async with live_rig(fresh_broker, database_url, db) as live:
        yield live


@pytest.fixture
def twilio(tmp_path: Path) -> Iterator[str]:
    """`zapflow emulator` (open accounts) on a free port; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "emulator.log").open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "zapflow", "emulator", "--port",
                                    str(port)], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/_emulator/messages", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "emulator.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def _start(rig: Rig, twilio: str, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "KAFKA_BOOTSTRAP_SERVERS": rig.brokers, "DATABASE_URL": rig.database_url,
        "ZAPFLOW_SECRET_KEY": SECRET_KEY_ENV, "ZAPFLOW_TWILIO_API_URL": twilio,
        "ZAPFLOW_PUBLIC_URL": rig.api_url, "ZAPFLOW_TWILIO_TIMEOUT_S": "2",
        "ZAPFLOW_TWILIO_SETTLE_S": "6", "ZAPFLOW_STATE_DIR": str(state_dir),
        "NO_PROXY": "127.0.0.1,localhost",
    }  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "zapflow", "worker", "sender"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def _done(rig: Rig) -> int:
    return int(await rig.db.fetchval(
        "SELECT count(*) FROM messages WHERE tenant_id = $1 AND direction = 'outbound' "
        "AND status <> 'requested'", rig.a.tenant.tenant_id,
    ))  # fmt: skip


def _runs_caught_up(log: Path) -> int:
    return log.read_text().count("sender caught up") if log.exists() else 0


async def _caught_up(log: Path, before: int, process: subprocess.Popen[bytes]) -> None:
    """Until this run has folded the event log (a new "caught up" line), or 60 s."""
    for _ in range(600):
        if await asyncio.to_thread(_runs_caught_up, log) > before or process.poll() is not None:
            return
        await asyncio.sleep(0.1)


async def _sending(
    received: Callable[[], Awaitable[list[dict[str, Any]]]], before: int,
    process: subprocess.Popen[bytes],
) -> None:  # fmt: skip
    """Until Twilio received a message more than `before` (this run sends), or 30 s."""
    for _ in range(300):
        if len(await received()) > before or process.poll() is not None:
            return
        await asyncio.sleep(0.1)


async def _until_done(rig: Rig, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(int(DEADLINE_S / 0.5)):
        if await _done(rig) >= MESSAGES or loop.time() > deadline:
            return
        await asyncio.sleep(0.5)


async def test_sigkills_at_random_points_never_send_a_message_twice(
    rig: Rig, twilio: str, tmp_path: Path
) -> None:
    sender = rig.a.tenant.sender
    requests = [rig.reply(rig.a, contact(n), f"mensagem {n}") for n in range(MESSAGES)]
    async with httpx.AsyncClient(base_url=twilio, timeout=10) as admin:
        for n in range(MESSAGES):  # each contact wrote first: WhatsApp's window is open
            opened = await admin.post("/_emulator/inbound",
                                      json={"recipient": contact(n), "sender": sender})  # fmt: skip
            assert opened.status_code == 204, opened.text
        await rig.send(*(rig.inbound(rig.a, contact(n), at_emulator=False)
                         for n in range(MESSAGES)))  # fmt: skip
        await rig.send(*(request for request, _ in requests))
        log, rng = tmp_path / "sender.log", random.Random(4)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        kills: list[int] = []  # messages at the emulator when each kill landed

        async def received() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (await admin.get("/_emulator/messages")).json()[
                "messages"
            ]
            return found

        while await _done(rig) < MESSAGES and loop.time() < deadline:
            # Now and then Twilio creates a message but its answer is late or lost: ambiguous.
            fault = {"kind": rng.choice(["slow", "disconnect"]), "delay_s": 3.0}
            assert (await admin.post("/_emulator/faults", json=fault)).status_code == 204
            before = await asyncio.to_thread(_runs_caught_up, log)
            process = _start(rig, twilio, tmp_path / "state", log)
            try:
                if len(kills) < MAX_KILLS:
                    # Killed while sending: once this run has folded the log and its first new
                    # message reached Twilio (however slow the machine is), a moment later.
                    await _caught_up(log, before, process)
                    await _sending(received, len(await received()), process)
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                    if process.poll() is None:
                        process.send_signal(signal.SIGKILL)
                        kills.append(len(await received()))
                else:  # the last run goes to the end
                    await _until_done(rig, deadline)
                    process.send_signal(signal.SIGTERM)
            finally:
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        sent_to_twilio = await received()
    text = await asyncio.to_thread(log.read_text)
    assert await _done(rig) == MESSAGES, text[-3000:]
    # Its logs name tenants and outbound ids, never a contact's number.
    assert "5511955" not in text
    assert '"outbound_id"' in text
    # The kills landed mid-stream, not before the first or after the last message.
    assert any(0 < k < MESSAGES for k in kills), kills
    bodies = Counter(entry["params"]["Body"][-1] for entry in sent_to_twilio)
    twice = [body for body, n in bodies.items() if n > 1]
    assert not twice, [(e["params"]["Body"][-1], e["received_at"]) for e in sent_to_twilio
                       if e["params"]["Body"][-1] in twice[:5]]  # fmt: skip
    assert bodies == Counter(f"mensagem {n}" for n in range(MESSAGES))
    # The ledger and the log say the same as the emulator: one SID per message, Twilio's own.
    ledger = await rig.db.fetch(
        "SELECT outbound_id, state, message_sid FROM send_ledger WHERE tenant_id = $1",
        rig.a.tenant.tenant_id,
    )
    assert {row["state"] for row in ledger} == {"sent"}
    by_ledger = {row["outbound_id"]: row["message_sid"] for row in ledger}
    assert set(by_ledger) == {oid for _, oid in requests}
    assert set(by_ledger.values()) == {entry["sid"] for entry in sent_to_twilio}
    sent = [e for e in await rig.events(rig.a) if e.type == "OutboundMessageSent"]
    by_log = {e.payload["outbound_id"]: e.payload["message_sids"] for e in sent}
    assert len(sent) == MESSAGES
    assert by_log == {oid: [sid] for oid, sid in by_ledger.items()}
