"""A tenant's agent settings: the command that replaces them, and what runs when there are none."""

from __future__ import annotations

from typing import Final, Literal

from commands.errors import Rejected
from commands.tenant import TenantProfile
from events.registry import Message
from events.tenant import AgentConfigured, AgentSettings

DEFAULT_PROMPT: Final = (
    "You are the WhatsApp assistant of a business. Answer the customer's questions briefly, "
    "politely and in the customer's language, using only what you know about the business. "
    "When you do not know, or the customer asks for a person, hand the conversation to a human."
)
FAQ_MODEL: Final = "faq"


class ConfigureAgent(Message):
    """Replace the tenant's agent settings (`zapflow agents configure`)."""

    type: Literal["ConfigureAgent"] = "ConfigureAgent"
    schema_version: Literal[1] = 1
    settings: AgentSettings


def decide_agent_config(current: TenantProfile | None, command: ConfigureAgent) -> AgentConfigured:
    if current is None:
        raise Rejected("unknown_tenant", "the tenant is not registered")
    return AgentConfigured(settings=command.settings)


def effective(settings: AgentSettings | None, llm_available: bool) -> tuple[str, AgentSettings]:
    """Which agent runs a tenant's turns ("llm" or "faq") and with what settings.

    A tenant that configured nothing still gets a working agent: the LLM with a sensible prompt
    when the platform has one (OPENAI_API_KEY), else the offline FAQ agent (which, with no FAQ,
    hands every conversation to a human rather than leaving the customer unanswered). A tenant
    whose settings name no model gets the platform's LLM, or the FAQ agent without one.
    """
    chosen = settings if settings is not None else AgentSettings(system_prompt=DEFAULT_PROMPT)
    return ("llm" if llm_available else "faq"), chosen
