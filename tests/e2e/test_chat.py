"""A new user's first minute, through a real `zapflow up`: create a tenant, give its agent a FAQ,
and talk to it with `zapflow chat` (signed webhooks); the offline FAQ agent answers from the FAQ
and hands off when it does not know."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.e2e.platform import env_for, start
from tests.e2e.test_inbound_flow import _create_tenant

pytestmark = pytest.mark.e2e
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
        talked = _zapflow(state, "chat", "--tenant", str(tenant), "--from",
                          "whatsapp:+5511955554444", "--wait", "30", stdin=lines)  # fmt: skip
    finally:
        code, output = platform.interrupt()
    assert talked.returncode == 0, talked.stderr
    assert talked.stdout.splitlines() == [
        "bot: Abrimos de segunda a sexta, das 8h às 18h.",
        "bot: Vou chamar uma pessoa da equipe.",
        "(the conversation is now handoff requested)",
    ], talked.stdout + talked.stderr
    assert "(2 messages sent)" in talked.stderr
    assert code == 0, output
