"""The registration runner (`zapflow worker registrations`, a real process) SIGKILLed at random
points while 20 registrations run, some of them for an e-mail another one claims: every one ends
completed or fully undone, each e-mail has at most one active user, and no step is in the log
twice (ADR 0018).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from commands.registration import user_id_of
from events.envelope import encode_command
from streams import kafka
from streams.topics import COMMANDS
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_registration_saga import about, begin, events, person

pytestmark = pytest.mark.e2e
REGISTRATIONS = 20
WAVE = 2
DEADLINE_S = 180.0
STEPS = (
    "EmailReserved", "UserCreated", "MembershipAdded", "InvitationIssued",
    "UserRegistrationCompensating", "UserDisabled", "MembershipRemoved", "InvitationRevoked",
    "EmailReservationReleased", "UserRegistrationCompleted", "UserRegistrationFailed",
)  # fmt: skip


def _start(brokers: str, database_url: str, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "KAFKA_BOOTSTRAP_SERVERS": brokers, "DATABASE_URL": database_url,
        "ZAPFLOW_STATE_DIR": str(state), "ZAPFLOW_REGISTRATION_STEP_TIMEOUT_S": "5",
    }  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "zapflow", "worker", "registrations"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _runs_caught_up(log: Path) -> int:
    return log.read_text().count("registrations caught up") if log.exists() else 0


async def _caught_up(log: Path, before: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if await asyncio.to_thread(_runs_caught_up, log) > before or process.poll() is not None:
            return
        await asyncio.sleep(0.05)


async def _over(db: asyncpg.Connection) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM registrations WHERE status IN ('completed', 'failed')"
    ))  # fmt: skip


async def _until_over(db: asyncpg.Connection, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(int(DEADLINE_S / 0.3)):
        if await _over(db) >= REGISTRATIONS or loop.time() > deadline:
            return
        await asyncio.sleep(0.3)


async def test_sigkills_at_random_points_leave_every_registration_done_or_undone(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    db: asyncpg.Connection, tmp_path: Path,
) -> None:  # fmt: skip
    _, a, b = platform
    rng = random.Random(6)
    plan = [(a if n % 2 else b, uuid.uuid4(), f"p{n % 14}@example.com")
            for n in range(REGISTRATIONS)]  # fmt: skip
    log = tmp_path / "registrations.log"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    produced, kills = 0, []  # registrations over and started, after each kill
    producer = kafka.producer(fresh_broker)
    await producer.start()
    while loop.time() < deadline:
        before = await asyncio.to_thread(_runs_caught_up, log)
        process = _start(fresh_broker, database_url, tmp_path / "state", log)
        try:
            await _caught_up(log, before, process)
            # Registrations started while it runs: the kill lands among their steps.
            for keyed, rid, email in plan[produced : produced + WAVE]:
                key, value, headers = encode_command(begin(keyed, rid, email))
                await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
                produced += 1
            if produced < REGISTRATIONS:
                # A registration's steps take a few broker round trips each (~0.2 s in all).
                await asyncio.sleep(rng.uniform(0.0, 0.08))
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(process.wait, 30)
                    # Nobody drives the sagas now: once what was sent is decided and projected,
                    # a registration not over is one the kill interrupted.
                    await asyncio.sleep(1.5)
                    kills.append((await _over(db), produced))
                continue
            await _until_over(db, deadline)
            process.send_signal(signal.SIGTERM)
            break
        finally:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    await producer.stop()
    text = await asyncio.to_thread(log.read_text)
    assert await _over(db) == REGISTRATIONS, text[-3000:]
    # Killed while work was in flight, not only between registrations.
    assert sum(over < started for over, started in kills) >= 2, kills
    found = await events(fresh_broker)
    winners: Counter[str] = Counter()
    for keyed, rid, email in plan:
        tenant = keyed.tenant.tenant_id
        row = await db.fetchrow("SELECT status, reason FROM registrations WHERE tenant_id = $1 "
                                "AND registration_id = $2", tenant, rid)  # fmt: skip
        assert row is not None
        held = await person(db, tenant, rid)
        if row["status"] == "completed":
            winners[email] += 1
            assert held == {"active": True, "member": True, "invited": True, "held": True}
        else:
            assert not held["active"], (rid, dict(row), held)
            assert not held["member"], (rid, dict(row), held)
            assert not held["invited"], (rid, dict(row), held)
            assert not held["held"], (rid, dict(row), held)
        twice = {kind: n for kind, n in about(found, rid).items() if kind in STEPS and n > 1}
        assert not twice, (rid, twice)
    # Six addresses were claimed twice: the second claim of each failed, for that reason only.
    outcomes = await db.fetch("SELECT status, failed_step, split_part(reason, ':', 1) AS why "
                              "FROM registrations")  # fmt: skip
    assert Counter(tuple(r) for r in outcomes) == Counter(
        {("completed", None, None): 14, ("failed", "reserve_email", "email_taken"): 6}
    )
    # Every address was won by exactly one registration, and only its user is active.
    assert set(winners.values()) == {1}
    assert set(winners) == {email for _, _, email in plan}
    active: Any = await db.fetch("SELECT email, user_id FROM users WHERE active")
    assert Counter(r["email"] for r in active) == Counter(set(winners))
    assert {r["user_id"] for r in active} <= {user_id_of(rid) for _, rid, _ in plan}
