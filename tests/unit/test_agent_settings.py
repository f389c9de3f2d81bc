"""Agent settings: defaults that work for a tenant that configured nothing, and the decision."""

from __future__ import annotations

import pytest

from commands.agent_config import DEFAULT_PROMPT, ConfigureAgent, decide_agent_config, effective
from commands.errors import Rejected
from commands.tenant import TenantProfile
from events.tenant import AgentSettings, Template

pytestmark = pytest.mark.unit
PROFILE = TenantProfile("Clínica", "AC" + "0" * 32, frozenset({"whatsapp:+14155238886"}))


def test_nothing_configured_still_answers() -> None:
    kind, settings = effective(None, llm_available=True)
    assert (kind, settings.system_prompt) == ("llm", DEFAULT_PROMPT)
    assert settings.enabled_tools == ["handoff_to_human"]  # it can always reach a person
    kind, _ = effective(None, llm_available=False)
    assert kind == "faq"


def test_configured_settings_are_kept() -> None:
    mine = AgentSettings(system_prompt="Você é a Sofia.", temperature=0.0)
    assert effective(mine, llm_available=True) == ("llm", mine)


def test_only_a_registered_tenant_configures_its_agent() -> None:
    command = ConfigureAgent(settings=AgentSettings(system_prompt="x"))
    assert decide_agent_config(PROFILE, command).settings == command.settings
    with pytest.raises(Rejected) as caught:
        decide_agent_config(None, command)
    assert caught.value.code == "unknown_tenant"


def test_one_template_per_purpose() -> None:
    template = Template(purpose="window_closed", content_sid="HX" + "a" * 32)
    AgentSettings(system_prompt="x", templates=[template])
    with pytest.raises(ValueError, match="one template per purpose"):
        AgentSettings(system_prompt="x", templates=[template, template])
