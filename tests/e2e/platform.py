"""Drives `zapflow up` as a user would: a subprocess, its own state dir and port, Ctrl-C to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from zapflow.processes import free_port, pid_alive


@dataclass
class Platform:
    process: subprocess.Popen[str]
    state_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def runtime(self) -> dict[str, object]:
        data: dict[str, object] = orjson.loads((self.state_dir / "runtime.json").read_bytes())
        return data

    def pids(self) -> list[int]:
        children = self.runtime()["children"]
        assert isinstance(children, dict)
        return [self.process.pid, *children.values()]

    def wait_ready(self, timeout_s: float = 90.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise AssertionError(f"zapflow up exited {self.process.returncode}: {err}{out}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2)
                # Ready as a user sees it: the API answers and the supervisor has announced it
                # (runtime.json, which other terminals read, is written only then).
                up = (self.state_dir / "runtime.json").exists()
                if response.status_code == 200 and up:
                    body: dict[str, object] = response.json()
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError("platform not ready in time")

    def interrupt(self, timeout_s: float = 60.0) -> tuple[int, str]:
        """Ctrl-C, as a terminal sends it; returns the exit code and everything printed."""
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, out + err


def env_for(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"} and not key.startswith("ZAPFLOW_")
    }
    env.update(ZAPFLOW_STATE_DIR=str(state_dir), ZAPFLOW_SHUTDOWN_GRACE_S="5", **extra)
    return env


def start(state_dir: Path, **extra: str) -> Platform:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "zapflow", "up"],
        env=env_for(state_dir, ZAPFLOW_HTTP_PORT=str(port), **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Platform(process, state_dir, port)


def all_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """The pids still alive after `timeout_s` (zombies of ours are reaped by their parents)."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if pid_alive(pid) and not _zombie(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False
