"""`zapflow up` on the embedded default: ready, reachable from another terminal, clean stop; the
Twilio emulator it runs unless ZAPFLOW_TWILIO_API_URL is set."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from emulator import EmulatorServer, create_app
from projections.database import connect
from tests.e2e.platform import all_dead, env_for, start

pytestmark = pytest.mark.e2e
SENDER = "whatsapp:+14155238886"
CONTACT = "whatsapp:+5511912345678"


def twilio(base_url: str, account_sid: str, token: str) -> Any:
    """The official SDK's client pointed at `base_url` (an empty TWILIO_EDGE/REGION: see the
    emulator's tests)."""
    client = Client(
        account_sid, token, http_client=TwilioHttpClient(timeout=10),
        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
    )  # fmt: skip
    client.api.base_url = base_url
    return client


def child_env(pid: int) -> dict[str, str]:
    """The environment a child process was started with (Linux)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {name.decode(): value.decode() for name, _, value in pairs}


def _cli(state_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapflow", *argv],
        env=env_for(state_dir),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def _remember(url: str, value: int) -> None:
    conn = await connect(url)
    try:
        await conn.execute(
            "INSERT INTO projection_checkpoints VALUES ('e2e', 'marker', 0, $1)", value
        )
    finally:
        await conn.close()


async def _recall(url: str) -> int | None:
    conn = await connect(url)
    try:
        value: int | None = await conn.fetchval(
            "SELECT next_offset FROM projection_checkpoints WHERE projection = 'e2e'"
        )
        return value
    finally:
        await conn.close()


def test_up_runs_everything_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    platform = start(state)
    try:
        ready = platform.wait_ready()
        assert ready["checks"] == {"broker": "ok", "database": "ok", "migrations": "ok"}
        runtime = platform.runtime()
        children = runtime["children"]
        assert isinstance(children, dict)
        assert set(children) == {"api", "decider", "agent", "sender", "registrations",
                                 "projector", "broker", "postgres", "emulator"}  # fmt: skip
        pids = platform.pids()

        # No ZAPFLOW_TWILIO_API_URL: the emulator runs, every child is pointed at it, and it
        # serves any tenant's account (open accounts: the first token presented holds).
        emulator_url = str(runtime["emulator_url"])
        assert emulator_url.startswith("http://127.0.0.1:")
        assert runtime["twilio_api_url"] == emulator_url
        for name in ("api", "decider", "agent", "sender", "registrations", "projector"):
            assert child_env(children[name])["ZAPFLOW_TWILIO_API_URL"] == emulator_url, name
        account, token = "AC" + uuid.uuid4().hex, uuid.uuid4().hex
        sent = twilio(emulator_url, account, token).messages.create(
            to=CONTACT, from_=SENDER, body="Olá!"
        )
        assert (sent.status, sent.account_sid) == ("queued", account)
        with pytest.raises(TwilioRestException) as refused:
            twilio(emulator_url, account, "another-token").messages.create(
                to=CONTACT, from_=SENDER, body="Olá!"
            )
        assert (refused.value.status, refused.value.code) == (401, 20003)
        assert (state / "logs" / "emulator.log").exists()

        again = _cli(state, "topics", "ensure")  # another terminal: no flags, same state dir
        assert again.returncode == 0, again.stderr
        assert '"created": []' in again.stdout

        database_url = str(runtime["database_url"])
        asyncio.run(_remember(database_url, 4242))
    finally:
        code, output = platform.interrupt()
    assert code == 0, output
    assert "zapflow is up" in output
    assert str(platform.port) in output
    assert f"Twilio API  {emulator_url}   emulator" in output
    assert all_dead(pids) == [], "orphans after Ctrl-C"
    assert not (state / "runtime.json").exists()

    second = start(state)
    try:
        second.wait_ready()
        assert asyncio.run(_recall(str(second.runtime()["database_url"]))) == 4242
        second_pids = second.pids()
    finally:
        code, output = second.interrupt()
    assert code == 0, output
    assert all_dead(second_pids) == []


def test_a_second_up_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    platform = start(state)
    try:
        platform.wait_ready()
        rival = _cli(state, "up")
        assert rival.returncode == 2
        assert "ZAPFLOW_STATE_DIR" in rival.stderr
        assert "already running" in rival.stderr
    finally:
        code, output = platform.interrupt()
    assert code == 0, output


def test_children_die_with_a_killed_supervisor_and_up_recovers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    platform = start(state)
    platform.wait_ready()
    pids = platform.pids()
    platform.process.kill()  # SIGKILL: no chance to clean up
    platform.process.communicate(timeout=30)
    assert all_dead(pids[1:], timeout_s=20) == [], "children outlived a SIGKILLed supervisor"

    after = start(state)  # stale runtime.json and postmaster.pid must not block a new start
    try:
        after.wait_ready()
    finally:
        code, output = after.interrupt()
    assert code == 0, output


def test_with_a_twilio_api_url_up_runs_no_emulator(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with EmulatorServer(create_app({}, open_accounts=True)) as elsewhere:
        platform = start(state, ZAPFLOW_TWILIO_API_URL=elsewhere.url)
        try:
            platform.wait_ready()
            runtime = platform.runtime()
            children = runtime["children"]
            assert isinstance(children, dict)
            assert "emulator" not in children
            assert (runtime["twilio_api_url"], runtime["emulator_url"]) == (elsewhere.url, "")
            assert child_env(children["sender"])["ZAPFLOW_TWILIO_API_URL"] == elsewhere.url
        finally:
            code, output = platform.interrupt()
    assert code == 0, output
    assert f"Twilio API  {elsewhere.url}   ZAPFLOW_TWILIO_API_URL" in output
    assert not (state / "logs" / "emulator.log").exists()
