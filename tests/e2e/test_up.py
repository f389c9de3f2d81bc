"""`zapflow up` on the embedded default: ready, reachable from another terminal, clean stop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from projections.database import connect
from tests.e2e.platform import all_dead, env_for, start

pytestmark = pytest.mark.e2e


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
        assert set(children) == {"api", "decider", "agent", "sender", "projector", "broker",
                                 "postgres"}  # fmt: skip
        pids = platform.pids()

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
