"""The registration runner (`zapflow worker registrations`, a real process) SIGKILLed at every
step of the saga: each forward step, the completion, and each compensation (ADR 0018).

The test reads `zapflow.commands` as it grows and kills the runner the moment the step's
command appears there, then starts it again. One kill point per registration, except those that
also set up a failure while the runner is dead: killed at `create_user`, the tenant is suspended
(its next step is refused, so the undoing includes `disable_user`, the next kill point); killed
at `add_membership`, the decider (a real process too) is held with SIGSTOP, so the invitation
the restarted runner asks for gets no outcome until it is given up, and is decided late, just
before the compensation: the undoing then starts with `revoke_invitation`. The addresses
claimed twice fail at `reserve_email` and give the kill points `compensate`, `release_email` and
`fail`. Every registration must end complete or with nothing at all, with no step in the log
twice, and the read models must agree with the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from commands.registration import user_id_of
from commands.registration_saga import command_id
from commands.tenant_lifecycle import SuspendTenant
from events.envelope import decode_command
from projections.checkpoints import partition_offsets
from projections.migrations import migrate
from projections.status import log_ends
from streams import kafka
from streams.log import submit_envelope
from streams.topics import COMMANDS, EVENTS
from tests.e2e.platform import env_for
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed, _keyed, _registration
from tests.integration.test_registration_saga import about, begin, events, person

pytestmark = pytest.mark.e2e
DEADLINE_S: Final = 60.0
STEP_TIMEOUT_S: Final = "2"
"""A step without an outcome is issued again after 2 s and, a forward step, given up after one
re-issue (4 s): long for any step of a running decider, short enough for the held one."""
FORWARD: Final = ("EmailReserved", "UserCreated", "MembershipAdded", "InvitationIssued")


def _spawn(name: str, brokers: str, database_url: str, state: Path) -> subprocess.Popen[bytes]:
    env = env_for(
        state, KAFKA_BOOTSTRAP_SERVERS=brokers, DATABASE_URL=database_url,
        ZAPFLOW_REGISTRATION_STEP_TIMEOUT_S=STEP_TIMEOUT_S, ZAPFLOW_REGISTRATION_MAX_REISSUES="1",
    )  # fmt: skip
    with (state / f"{name}.log").open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "zapflow", "worker", name], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


@dataclass
class Processes:
    """The decider, the projector and the runner as `zapflow up` runs them: processes."""

    brokers: str
    database_url: str
    state: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: list[str] = field(default_factory=list)
    """The saga command each kill of the runner landed on."""

    def start(self, name: str) -> None:
        self.running[name] = _spawn(name, self.brokers, self.database_url, self.state)

    def kill_runner(self, at: str) -> None:
        """SIGKILL, from the watcher's callback: nothing of ours runs in between."""
        runner = self.running["registrations"]
        assert runner.poll() is None, self.tail("registrations")
        runner.send_signal(signal.SIGKILL)
        self.kills.append(at)

    def hold_decider(self, hold: bool) -> None:
        """SIGSTOP: the decider decides nothing until SIGCONT (a stall, not a crash)."""
        decider = self.running["decider"]
        assert decider.poll() is None, self.tail("decider")
        os.kill(decider.pid, signal.SIGSTOP if hold else signal.SIGCONT)

    async def restart_runner(self) -> None:
        await asyncio.to_thread(self.running["registrations"].wait, 30)
        self.start("registrations")

    def tail(self, name: str) -> str:
        return (self.state / f"{name}.log").read_text()[-3000:]

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is not None:
                continue
            os.kill(process.pid, signal.SIGCONT)  # a held decider must hear the SIGTERM
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Watch:
    """Reads `zapflow.commands` as it grows and acts the moment an armed command appears."""

    brokers: str
    seen: set[uuid.UUID] = field(default_factory=set)
    armed: dict[uuid.UUID, tuple[Callable[[], None], asyncio.Event]] = field(default_factory=dict)
    failed: list[Exception] = field(default_factory=list)
    names: dict[str, tuple[uuid.UUID, asyncio.Event]] = field(default_factory=dict)

    async def wait(self, armed: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(armed.wait(), DEADLINE_S)
        except TimeoutError:
            waiting = [name for name, (_, done) in self.names.items() if done is armed]
            raise AssertionError(f"{waiting} not issued in {DEADLINE_S:.0f} s") from None
        if self.failed:
            raise self.failed[0]

    def arm(self, rid: uuid.UUID, name: str, action: Callable[[], None]) -> asyncio.Event:
        """Run `action` when the registration's `name` command appears; the event says when."""
        cid = command_id(rid, name)
        assert cid not in self.seen, f"{name} of {rid} already issued"
        done = asyncio.Event()
        self.armed[cid] = (action, done)
        self.names[f"{name} of {rid}"] = (cid, done)
        return done

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # A short fetch wait: the kill must land before the runner, two hops later (the
        # decider's answer, then its own fetch), could issue the step after this one.
        consumer = kafka.groupless_consumer(self.brokers, fetch_max_wait_ms=2)
        await consumer.start()
        partitions = [TopicPartition(COMMANDS, p) for p in range(12)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)

        async def read() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=2)
                for records in batch.values():
                    for record in records:
                        cid = decode_command(record.value).command_id
                        self.seen.add(cid)
                        action, done = self.armed.pop(cid, (None, None))
                        if action is not None and done is not None:
                            try:
                                action()
                            except Exception as exc:  # noqa: BLE001 - raised by the test waiting on it
                                self.failed.append(exc)
                            done.set()

        task = asyncio.create_task(read())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await consumer.stop()


async def _poll[T](probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
    for _ in range(int(DEADLINE_S / 0.1)):
        value = await probe()
        if done(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not in time")


async def _steps(brokers: str, rid: uuid.UUID) -> Counter[str]:
    return about(await events(brokers), rid)


async def _tenants(producer: AIOKafkaProducer, db: asyncpg.Connection, count: int) -> list[Keyed]:
    """Tenants registered through the log, once projected."""
    found = [_keyed() for _ in range(count)]
    for keyed in found:
        await submit_envelope(producer, _registration(keyed))
    ids = [keyed.tenant.tenant_id for keyed in found]
    await _poll(lambda: db.fetchval("SELECT count(*) FROM tenants WHERE tenant_id = ANY($1)", ids),
                lambda n: n == count, "tenants projected")  # fmt: skip
    return found


async def _projected(brokers: str, db: asyncpg.Connection) -> None:
    """Until the identity read models have every event the log holds now."""
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        ends = await log_ends(consumer, EVENTS, range(12), {})
    finally:
        await consumer.stop()

    def behind(at: dict[int, int]) -> bool:
        return any(at.get(p, 0) < end for p, end in ends.items())

    await _poll(lambda: partition_offsets(db, "identity", EVENTS), lambda at: not behind(at),
                "identity projected")  # fmt: skip


async def _over(db: asyncpg.Connection) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM registrations WHERE status IN ('completed', 'failed')"
    ))  # fmt: skip


async def test_the_runner_killed_at_every_step_leaves_each_registration_done_or_undone(
    fresh_broker: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(db)
    run = Processes(fresh_broker, database_url, tmp_path)
    watch = Watch(fresh_broker)
    producer = kafka.producer(fresh_broker)
    await producer.start()
    for name in ("decider", "projector", "registrations"):
        run.start(name)
    plan: dict[uuid.UUID, tuple[Keyed, str]] = {}

    def killer(name: str) -> Callable[[], None]:
        return lambda: run.kill_runner(name)

    async def killed(armed: asyncio.Event, restart: bool = True) -> None:
        await watch.wait(armed)
        if restart:
            await run.restart_runner()

    try:
        async with watch.running():
            a, b, suspended = await _tenants(producer, db, 3)
            # Forward steps and the completion: each registration ends complete.
            for name, email in [("reserve_email", "e1@example.com"),
                                ("issue_invitation", "e4@example.com"),
                                ("complete", "e5@example.com")]:  # fmt: skip
                rid = uuid.uuid4()
                armed = watch.arm(rid, name, killer(name))
                plan[rid] = (a, email)
                await submit_envelope(producer, begin(a, rid, email))
                await killed(armed)
            # The addresses are taken (their claims were on the log before these begin): the
            # undoing of a registration that never got its address.
            for name, keyed, email in [("compensate", b, "e1@example.com"),
                                       ("release_email", b, "e4@example.com"),
                                       ("fail", a, "e5@example.com")]:  # fmt: skip
                rid = uuid.uuid4()
                armed = watch.arm(rid, name, killer(name))
                plan[rid] = (keyed, email)
                await submit_envelope(producer, begin(keyed, rid, email))
                await killed(armed)
            # Killed at create_user; the tenant suspended while the runner is down: the next
            # step is refused, and the undoing disables the user (killed there too).
            refused = uuid.uuid4()
            armed = watch.arm(refused, "create_user", killer("create_user"))
            plan[refused] = (suspended, "e2@example.com")
            await submit_envelope(producer, begin(suspended, refused, "e2@example.com"))
            await killed(armed, restart=False)
            suspend = SuspendTenant(reason="injected while the runner is down")
            await submit_envelope(producer, command_envelope(suspended.tenant.tenant_id, suspend))
            armed = watch.arm(refused, "disable_user", killer("disable_user"))
            await run.restart_runner()
            await killed(armed)
            await _poll(lambda: _over(db), lambda n: n == len(plan), "all over before the hold")
            # Killed at add_membership with the decider held at once; the restarted runner's
            # invitation gets no outcome, is given up, and is decided late, before the
            # compensation: the undoing revokes it (killed there), then removes the membership
            # (killed there).
            late = uuid.uuid4()
            plan[late] = (a, "e3@example.com")

            def kill_and_hold() -> None:
                run.kill_runner("add_membership")
                run.hold_decider(True)

            armed = watch.arm(late, "add_membership", kill_and_hold)
            await submit_envelope(producer, begin(a, late, "e3@example.com"))
            await killed(armed, restart=False)
            if not (await _steps(fresh_broker, late))["MembershipAdded"]:
                # Held before it decided the membership: let it decide what it has (the runner
                # is dead, so nothing of the invitation's) and hold it again.
                run.hold_decider(False)
                await _poll(lambda: _steps(fresh_broker, late),
                            lambda s: s["MembershipAdded"] == 1, "membership added")  # fmt: skip
                run.hold_decider(True)
            # Else the runner may have asked for the invitation before it died, but the decider
            # was held at once: undecided, unless three hops beat one (the test's premise).
            assert not (await _steps(fresh_broker, late))["InvitationIssued"]
            compensate = watch.arm(late, "compensate", lambda: run.hold_decider(False))
            armed = watch.arm(late, "revoke_invitation", killer("revoke_invitation"))
            await run.restart_runner()
            await watch.wait(compensate)
            await killed(armed, restart=False)
            armed = watch.arm(late, "remove_membership", killer("remove_membership"))
            await run.restart_runner()
            await killed(armed)
            await _poll(lambda: _over(db), lambda n: n == len(plan), "all over")
            await _projected(fresh_broker, db)
    finally:
        run.stop()
        await producer.stop()

    assert sorted(run.kills) == sorted([
        "reserve_email", "create_user", "add_membership", "issue_invitation", "complete",
        "compensate", "revoke_invitation", "remove_membership", "disable_user", "release_email",
        "fail",
    ])  # fmt: skip
    found = await events(fresh_broker)
    rows = {rid: await _row(db, keyed, rid) for rid, (keyed, _) in plan.items()}
    outcomes = Counter((r["status"], r["failed_step"], (r["reason"] or "").split(":")[0])
                       for r in rows.values())  # fmt: skip
    # Refused at add_membership, unless the runner had asked for it before the kill landed
    # (then before the suspension): refused one step later; either way the user is disabled.
    refused_at = rows[refused]["failed_step"]
    assert refused_at in ("add_membership", "issue_invitation"), rows[refused]
    assert outcomes == Counter({
        ("completed", None, ""): 3,
        ("failed", "reserve_email", "email_taken"): 3,
        ("failed", refused_at, "tenant_suspended"): 1,
        ("failed", "issue_invitation", "timeout"): 1,
    }), rows  # fmt: skip
    undone = {"UserCreated": "UserDisabled", "MembershipAdded": "MembershipRemoved",
              "InvitationIssued": "InvitationRevoked"}  # fmt: skip
    for rid, (keyed, _) in plan.items():
        row, steps = rows[rid], about(found, rid)
        twice = {kind: n for kind, n in steps.items() if n > 1}
        assert not twice, (rid, twice)  # no step decided twice
        held = await person(db, keyed.tenant.tenant_id, rid)
        if row["status"] == "completed":
            assert held == {"active": True, "member": True, "invited": True, "held": True}
            assert set(steps) == {"UserRegistrationStarted", *FORWARD, "UserRegistrationCompleted"}
            continue
        done = [kind for kind in FORWARD if steps[kind]]
        # Undone exactly what was done, nothing else; the claim closed even if never won.
        assert set(steps) == {
            "UserRegistrationStarted", *done, "UserRegistrationCompensating",
            *(undone[kind] for kind in done if kind in undone), "EmailReservationReleased",
            "UserRegistrationFailed",
        }, steps  # fmt: skip
        assert held == {
            "active": False if "UserCreated" in done else None,
            "member": False if "MembershipAdded" in done else None,
            "invited": False if "InvitationIssued" in done else None,
            "held": False if "EmailReserved" in done else None,
        }, (rid, held)  # fmt: skip
        assert (row["reservation"], row["user_state"], row["membership"], row["invitation"]) == (
            "released" if "EmailReserved" in done else "none",
            "disabled" if "UserCreated" in done else "none",
            False,
            "revoked" if "InvitationIssued" in done else "none",
        ), dict(row)
    # No step refused twice either (a refusal is an outcome too).
    refusals = Counter(e.payload["command_id"] for e in found if e.type == "CommandRejected")
    assert [cid for cid, n in refusals.items() if n > 1] == []
    # One user per address, the one whose registration completed.
    active = await db.fetch("SELECT email, user_id FROM users WHERE active")
    completed = {user_id_of(rid) for rid, row in rows.items() if row["status"] == "completed"}
    assert {r["user_id"] for r in active} == completed
    assert Counter(r["email"] for r in active) == Counter(["e1@example.com", "e4@example.com",
                                                           "e5@example.com"])  # fmt: skip
    holders = await db.fetch("SELECT email, registration_id FROM email_directory WHERE held")
    assert {r["registration_id"] for r in holders} == {
        rid for rid, row in rows.items() if row["status"] == "completed"
    }  # fmt: skip


async def _row(db: asyncpg.Connection, keyed: Keyed, rid: uuid.UUID) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM registrations WHERE tenant_id = $1 "
                            "AND registration_id = $2", keyed.tenant.tenant_id, rid)  # fmt: skip
    assert row is not None, rid
    return row
