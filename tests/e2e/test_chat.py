"""A new user's first minute, through a real `zapflow up`: create a tenant, give its agent a FAQ,
and talk to it with `zapflow chat` (signed webhooks); the offline FAQ agent answers from the FAQ
and hands off when it does not know. The Twilio emulator `zapflow up` runs hears the contact, so
its 24-hour window is open for the replies, and chat says what it received of them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.platform import env_for, start
from tests.e2e.test_inbound_flow import ACCOUNT, SENDER, TOKEN, _create_tenant
from tests.e2e.test_up import twilio

pytestmark = pytest.mark.e2e
CONTACT = "whatsapp:+5511955554444"
NOT_SENT = "  (not received by the Twilio emulator within 5 s)"
AGENT = {
    "system_prompt": "Você é a assistente da Clínica Sorriso.",
    "reply_language": "pt-BR",
    "faq": [{"question": "Qual o horário de funcionamento?",
             "answer": "Abrimos de segunda a sexta, das 8h às 18h."}],
    "fallback_message": "Vou chamar uma pessoa da equipe.",
}  # fmt: skip


def _zapflow(state: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapflow", *argv], input=stdin, env=env_for(state),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def _settled(client: Any, sid: str) -> Any:
    """The message once it is read or has failed (the emulator's lifecycle takes < 1 s)."""
    deadline = time.monotonic() + 10
    while (message := client.messages(sid).fetch()).status not in ("read", "failed"):
        assert time.monotonic() < deadline, message.status
        time.sleep(0.1)
    return message


def test_talk_to_the_faq_agent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    platform = start(state, ZAPFLOW_AGENT_DEBOUNCE_S="0.2")
    try:
        platform.wait_ready()
        tenant, _ = _create_tenant(state)
        configured = _zapflow(state, "agents", "configure", "--tenant", str(tenant), "--file",
                              "-", stdin=orjson.dumps(AGENT).decode())  # fmt: skip
        assert configured.returncode == 0, configured.stderr
        lines = "Oi! Qual é o horário de vocês?\nTem estacionamento?\n"
        talked = _zapflow(state, "chat", "--tenant", str(tenant), "--from", CONTACT,
                          "--wait", "30", stdin=lines)  # fmt: skip
        # The emulator heard the contact: a free-form message to them now is inside the window.
        emulator = twilio(str(platform.runtime()["emulator_url"]), ACCOUNT, TOKEN)
        sid = emulator.messages.create(to=CONTACT, from_=SENDER, body="Até logo!").sid
        final = _settled(emulator, sid)
    finally:
        code, output = platform.interrupt()
    assert talked.returncode == 0, talked.stderr
    said = talked.stdout.splitlines()
    assert [line for line in said if not line.startswith("  ")] == [
        "bot: Abrimos de segunda a sexta, das 8h às 18h.",
        "bot: Vou chamar uma pessoa da equipe.",
        "(the conversation is now handoff requested)",
    ], talked.stdout + talked.stderr
    # Each reply as the emulator received it from the sender: it really left the platform.
    first, second = "Abrimos de segunda a sexta, das 8h às 18h.", "Vou chamar uma pessoa da equipe."
    assert said[1] == f"  twilio: {first}", talked.stdout
    assert said[-2] == f"  twilio: {second}", talked.stdout
    assert NOT_SENT not in said
    assert "(2 messages sent)" in talked.stderr
    assert (final.status, final.error_code) == ("read", None)
    assert code == 0, output
