"""`<state_dir>/runtime.json`: how CLI commands in another terminal find a running `zapflow up`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from zapflow.errors import ConfigurationError
from zapflow.processes import pid_alive
from zapflow.settings import Settings


@dataclass(frozen=True, slots=True)
class Runtime:
    supervisor_pid: int
    bootstrap_servers: str
    database_url: str
    api_url: str
    children: dict[str, int]
    public_url: str = ""
    """The URL the API checks Twilio signatures against (`zapflow chat` signs with it)."""
    twilio_api_url: str = ""
    """The Twilio REST base URL the children were given ("": none, they use their own setting)."""
    emulator_url: str = ""
    """The Twilio emulator `zapflow up` runs ("": none; `zapflow chat` then shows no sends)."""


def write(path: Path, runtime: Runtime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(asdict(runtime), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def read_live(path: Path) -> Runtime | None:
    """The runtime of a `zapflow up` that is still running, else None."""
    try:
        data = orjson.loads(path.read_bytes())
        runtime = Runtime(**data)
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None
    return runtime if pid_alive(runtime.supervisor_pid) else None


@dataclass(frozen=True, slots=True)
class Endpoints:
    bootstrap_servers: str
    database_url: str


def resolve(settings: Settings) -> Endpoints:
    """Explicit settings win; otherwise those of the `zapflow up` using the same state dir."""
    live = read_live(settings.runtime_file)
    brokers = settings.kafka_bootstrap_servers or (live.bootstrap_servers if live else None)
    database = settings.database_url or (live.database_url if live else None)
    hint = f"and no running `zapflow up` uses ZAPFLOW_STATE_DIR={settings.state_dir}"
    if brokers is None:
        raise ConfigurationError(
            "KAFKA_BOOTSTRAP_SERVERS", "(unset)", f"no broker configured {hint}"
        )
    if database is None:
        raise ConfigurationError("DATABASE_URL", "(unset)", f"no database configured {hint}")
    return Endpoints(brokers, database)
