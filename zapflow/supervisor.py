"""`zapflow up`: the whole platform on one machine, supervised (see ADR 0005).

Order of start: broker (dev Tansu unless KAFKA_BOOTSTRAP_SERVERS), PostgreSQL (embedded unless
DATABASE_URL), migrations and topics, the Twilio emulator (unless ZAPFLOW_TWILIO_API_URL; every
other child is then given its URL as ZAPFLOW_TWILIO_API_URL), then the API and every worker as
child processes. Order of stop: API, workers, then the projector with the emulator (after the
sender, so its last calls are answered), PostgreSQL, broker; each gets SIGTERM, then SIGKILL
after the grace period. A second Ctrl-C skips the grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from projections.database import ensure_database, redact
from streams.restore import restore
from streams.worker import WORKERS
from zapflow import runtime
from zapflow.devbroker import DevBroker, start_dev_broker
from zapflow.devdb import DATABASE, EmbeddedPostgres, start_embedded_postgres
from zapflow.errors import ConfigurationError
from zapflow.processes import free_port, port_is_free, spawn, stop_all
from zapflow.secret_key import resolve_secret_key
from zapflow.settings import Settings
from zapflow.setup import check_broker, check_database, setup


@dataclass(slots=True)
class _Stack:
    broker: DevBroker | None = None
    database: EmbeddedPostgres | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: int = 0

    def stop_requested(self) -> bool:
        return self.stopping > 0


def up(settings: Settings, say: Callable[[str], None] = print) -> int:
    """Run until Ctrl-C/SIGTERM or until a child dies; returns the exit code."""
    state = settings.state_dir.resolve()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    live = runtime.read_live(settings.runtime_file)
    if live is not None:
        raise ConfigurationError(
            "ZAPFLOW_STATE_DIR",
            str(state),
            f"`zapflow up` is already running (pid {live.supervisor_pid})",
        )
    if not port_is_free(settings.http_host, settings.http_port):
        raise ConfigurationError(
            "ZAPFLOW_HTTP_PORT", str(settings.http_port), "port already in use"
        )

    stack = _Stack()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stack.stopping += 1

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(settings, stack, state, logs, say)
    finally:
        _shutdown(stack, settings.shutdown_grace_s, say)
        settings.runtime_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    settings: Settings, stack: _Stack, state: Path, logs: Path, say: Callable[[str], None]
) -> int:
    timeout = settings.connect_timeout_s
    resolve_secret_key(settings, create=True)  # once, so every child finds the same key file
    if settings.kafka_bootstrap_servers:
        brokers = settings.kafka_bootstrap_servers
        asyncio.run(check_broker(brokers, timeout))
    else:
        stack.broker = start_dev_broker(settings.broker_port, logs / "broker.log")
        brokers = stack.broker.bootstrap_servers
    if settings.database_url:
        database_url = settings.database_url
        asyncio.run(check_database(database_url, timeout))
    else:
        stack.database = start_embedded_postgres(
            state, settings.postgres_port, logs / "postgres.log"
        )
        asyncio.run(ensure_database(stack.database.url("postgres"), DATABASE, timeout))
        database_url = stack.database.url()
    endpoints = runtime.Endpoints(brokers, database_url)
    asyncio.run(setup(endpoints, settings))
    restored = asyncio.run(restore(brokers, database_url, only_if_empty=True))
    if restored.total:
        say(f"zapflow: restored {restored.total} events from the event archive into the log")
    if stack.stop_requested():
        return 130

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": brokers, "DATABASE_URL": database_url}
    emulator_url = ""
    if settings.twilio_api_url is None:
        emulator_url = _start_emulator(stack, logs, env, timeout * 3)
        if not emulator_url:
            dead = _report_dead_child(stack, logs, say)
            if dead is None and not stack.stop_requested():
                say(f"zapflow: the Twilio emulator did not answer; see {logs / 'emulator.log'}")
            return dead or (0 if stack.stop_requested() else 1)
        env["ZAPFLOW_TWILIO_API_URL"] = emulator_url
    for name in ("api", *WORKERS):
        argv = [sys.executable, "-m", "zapflow", *(["api"] if name == "api" else ["worker", name])]
        with (logs / f"{name}.log").open("ab") as log:
            stack.children[name] = spawn(argv, log=log, env=env)

    api_url = f"http://{settings.http_host}:{settings.http_port}"
    if not _wait_http(f"{api_url}/healthz", stack, timeout * 3):
        dead = _report_dead_child(stack, logs, say)
        if dead is None and stack.stop_requested():
            # Ctrl-C while this loop still polled /healthz (a slow answer under load) while the
            # API already answered others: a requested stop, not a failed start.
            return 0
        return dead or 1
    runtime.write(
        settings.runtime_file,
        runtime.Runtime(
            supervisor_pid=os.getpid(),
            bootstrap_servers=brokers,
            database_url=database_url,
            api_url=api_url,
            children={name: proc.pid for name, proc in stack.children.items()}
            | ({"broker": stack.broker.process.pid} if stack.broker else {})
            | ({"postgres": stack.database.process.pid} if stack.database else {}),
            public_url=settings.effective_public_url,
            twilio_api_url=emulator_url or settings.twilio_api_url or "",
            emulator_url=emulator_url,
        ),
    )
    say(_banner(settings, stack, api_url, brokers, database_url, logs, emulator_url))
    while not stack.stop_requested():
        dead = _report_dead_child(stack, logs, say)
        if dead is not None:
            return dead
        time.sleep(0.2)
    return 0


def _start_emulator(stack: _Stack, logs: Path, env: dict[str, str], timeout_s: float) -> str:
    """The Twilio emulator as a child on a free local port; its URL once it answers, else ""."""
    host = "127.0.0.1"
    port = free_port(host)
    argv = [sys.executable, "-m", "zapflow", "emulator", "--host", host, "--port", str(port)]
    with (logs / "emulator.log").open("ab") as log:
        stack.children["emulator"] = spawn(argv, log=log, env=env)
    url = f"http://{host}:{port}"
    return url if _wait_http(f"{url}/_emulator/callback-options", stack, timeout_s) else ""


def _wait_http(url: str, stack: _Stack, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stack.stopping:
        if any(proc.poll() is not None for proc in stack.children.values()):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def _report_dead_child(stack: _Stack, logs: Path, say: Callable[[str], None]) -> int | None:
    for name, proc in stack.children.items():
        code = proc.poll()
        if code is not None:
            say(f"zapflow: {name} exited with code {code}; see {logs / f'{name}.log'}; stopping")
            return code or 1
    return None


def _shutdown(stack: _Stack, grace_s: float, say: Callable[[str], None]) -> None:
    if stack.children or stack.broker or stack.database:
        say("zapflow: stopping…")

    def grace() -> float:
        return 0.5 if stack.stopping > 1 else grace_s

    # The API first (no new commands), then the decider (it decides what was accepted), the
    # agent, the sender and the registration saga, and the projector last: it drains the log
    # into the event archive before the (in-memory) development broker stops (ADR 0009). The
    # Twilio emulator stops with it, after the sender, whose last calls it still answers.
    for group in (["api"], ["decider", "agent", "sender", "registrations"],
                  ["projector", "emulator"]):  # fmt: skip
        stop_all([stack.children[name] for name in group if name in stack.children], grace())
    if stack.database is not None:
        stack.database.stop(grace())
    if stack.broker is not None:
        stack.broker.stop(grace())


def _banner(
    settings: Settings, stack: _Stack, api_url: str, brokers: str, database_url: str, logs: Path,
    emulator_url: str,
) -> str:  # fmt: skip
    broker_kind = "development broker (Tansu, in memory)" if stack.broker else "external"
    db_kind = f"embedded, data in {stack.database.data_dir}" if stack.database else "external"
    if emulator_url:
        twilio = f"{emulator_url}   emulator (any account; zapflow chat shows what it receives)"
    else:
        twilio = f"{settings.twilio_api_url}   ZAPFLOW_TWILIO_API_URL"
    processes = ", ".join(["api", *WORKERS, *(["emulator"] if emulator_url else [])])
    return "\n".join(
        [
            "",
            "zapflow is up",
            f"  API         {api_url}   (docs {api_url}/docs, ready {api_url}/readyz)",
            f"  public URL  {settings.effective_public_url}",
            f"  broker      {brokers}   {broker_kind}",
            f"  database    {redact(database_url)}   {db_kind}",
            f"  Twilio API  {twilio}",
            f"  processes   {processes}",
            f"  logs        {logs}",
            f"  state       {settings.state_dir.resolve()}",
            "  stop        Ctrl-C (twice to skip the grace period)",
            "",
        ]
    )
