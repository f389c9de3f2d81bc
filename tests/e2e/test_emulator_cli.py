"""`zapflow emulator`: the Twilio emulator as a process of its own, as `zapflow up` runs it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.platform import env_for
from tests.e2e.test_up import CONTACT, SENDER, twilio

pytestmark = pytest.mark.e2e


def _emulator(tmp_path: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zapflow", "emulator", *argv], env=env_for(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_it_prints_its_url_serves_any_account_and_stops_cleanly(
    tmp_path: Path, stop: signal.Signals
) -> None:
    process = _emulator(tmp_path)
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", announced)
        assert found is not None, announced
        account, token = "AC" + uuid.uuid4().hex, uuid.uuid4().hex
        message = twilio(found.group(), account, token).messages.create(
            to=CONTACT, from_=SENDER, body="oi"
        )
        assert (message.status, message.account_sid) == ("queued", account)
    finally:
        process.send_signal(stop)
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _emulator(tmp_path, "--port", str(port))
        _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.startswith(f"zapflow: error: --port={port}: cannot listen"), err
