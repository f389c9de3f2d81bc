"""Bad configuration fails fast: exit code 2, one line naming the setting, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import env_for
from zapflow.processes import free_port

pytestmark = pytest.mark.e2e


def _up(state_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapflow", "up"],
        env=env_for(state_dir, ZAPFLOW_CONNECT_TIMEOUT_S="3", **env),
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


def _assert_one_clear_error(result: subprocess.CompletedProcess[str], setting: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("zapflow: error:")]
    assert len(errors) == 1, result.stderr
    assert setting in errors[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_unreachable_broker(tmp_path: Path) -> None:
    result = _up(tmp_path, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    _assert_one_clear_error(result, "KAFKA_BOOTSTRAP_SERVERS")


def test_wrong_database_url(tmp_path: Path, bootstrap_servers: str) -> None:
    url = f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/nowhere"
    result = _up(tmp_path, KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers, DATABASE_URL=url)
    _assert_one_clear_error(result, "DATABASE_URL")
    assert "secret-pw" not in result.stderr


def test_http_port_in_use(tmp_path: Path, busy_port: int) -> None:
    _assert_one_clear_error(_up(tmp_path, ZAPFLOW_HTTP_PORT=str(busy_port)), "ZAPFLOW_HTTP_PORT")


def test_broker_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = _up(tmp_path, ZAPFLOW_BROKER_PORT=str(busy_port))
    _assert_one_clear_error(result, "ZAPFLOW_BROKER_PORT")
