"""Events of a tenant's own stream ("tenant:<id>"): registration, settings, senders, suspension."""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.registry import Message


class TenantRegistered(Message):
    """A tenant exists. Its Twilio auth token is stored only encrypted, its API key only hashed."""

    type: Literal["TenantRegistered"] = "TenantRegistered"
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    twilio_account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token_encrypted: str = Field(description="AES-GCM, base64; key from settings.")
    senders: list[str] = Field(min_length=1, description='e.g. "whatsapp:+14155238886"')
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


type Tool = Literal["handoff_to_human", "close_conversation", "search_knowledge"]
TOOLS: tuple[Tool, ...] = ("handoff_to_human", "close_conversation", "search_knowledge")
DEFAULT_TOOLS: tuple[Tool, ...] = ("handoff_to_human",)


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Template(_Part):
    """A WhatsApp template the tenant had approved, and when the platform may use it."""

    purpose: Literal["window_closed", "fallback"] = Field(
        description="window_closed: sent instead of a free-form message outside the 24-hour "
        "window; fallback: sent when the agent fails and the window is closed."
    )
    content_sid: str = Field(pattern=r"^HX[0-9a-fA-F]{32}$")
    variables: dict[str, str] = Field(default_factory=dict)


class FaqEntry(_Part):
    question: str = Field(min_length=1, max_length=500)
    answer: str = Field(min_length=1, max_length=2000)


class AgentSettings(_Part):
    """How a tenant's agent behaves; a whole new set replaces the previous one."""

    system_prompt: str = Field(min_length=1, max_length=8000)
    model: str | None = Field(
        default=None, min_length=1, max_length=100,
        description="None: the platform's default model (ZAPFLOW_OPENAI_MODEL).",
    )  # fmt: skip
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_tokens: int = Field(default=400, ge=16, le=4096)
    reply_language: str = Field(default="pt-BR", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    enabled_tools: list[Tool] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    templates: list[Template] = Field(default_factory=list, max_length=20)
    faq: list[FaqEntry] = Field(default_factory=list, max_length=500)
    daily_token_budget: int | None = Field(default=None, ge=0)
    fallback_message: str = Field(
        default="Desculpe, não consegui responder agora. Uma pessoa da nossa equipe vai "
        "continuar esta conversa.",
        min_length=1, max_length=1000,
    )  # fmt: skip

    def template(self, purpose: Literal["window_closed", "fallback"]) -> Template | None:
        """The approved template for `purpose` (at most one per purpose), if any."""
        return next((t for t in self.templates if t.purpose == purpose), None)

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if len(set(self.enabled_tools)) != len(self.enabled_tools):
            raise ValueError("enabled_tools lists a tool twice")
        purposes = [template.purpose for template in self.templates]
        if len(set(purposes)) != len(purposes):
            raise ValueError("one template per purpose")
        return self


class AgentConfigured(Message):
    """The tenant's agent settings from now on (the whole set, not a change)."""

    type: Literal["AgentConfigured"] = "AgentConfigured"
    schema_version: Literal[1] = 1
    settings: AgentSettings


SENDER_PATTERN: Final = r"^(whatsapp:)?\+[1-9][0-9]{6,14}$"


class TenantSettingsUpdated(Message):
    type: Literal["TenantSettingsUpdated"] = "TenantSettingsUpdated"
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)


class WhatsAppSenderAdded(Message):
    type: Literal["WhatsAppSenderAdded"] = "WhatsAppSenderAdded"
    schema_version: Literal[1] = 1
    sender: str = Field(pattern=SENDER_PATTERN)


class WhatsAppSenderRemoved(Message):
    type: Literal["WhatsAppSenderRemoved"] = "WhatsAppSenderRemoved"
    schema_version: Literal[1] = 1
    sender: str = Field(pattern=SENDER_PATTERN)


class TwilioCredentialsRotated(Message):
    """The tenant's Twilio credentials from now on; the token, as ever, only encrypted."""

    type: Literal["TwilioCredentialsRotated"] = "TwilioCredentialsRotated"
    schema_version: Literal[1] = 1
    twilio_account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token_encrypted: str = Field(
        min_length=1, description="AES-GCM, base64; key from settings."
    )


class TenantSuspended(Message):
    """No inbound message is accepted and nothing is sent until the tenant is reactivated."""

    type: Literal["TenantSuspended"] = "TenantSuspended"
    schema_version: Literal[1] = 1
    reason: str = Field(min_length=1, max_length=500)


class TenantReactivated(Message):
    type: Literal["TenantReactivated"] = "TenantReactivated"
    schema_version: Literal[1] = 1


type TenantLifecycleEvent = (
    TenantSettingsUpdated
    | WhatsAppSenderAdded
    | WhatsAppSenderRemoved
    | TwilioCredentialsRotated
    | TenantSuspended
    | TenantReactivated
)
TENANT_LIFECYCLE_EVENTS: Final = (
    TenantSettingsUpdated,
    WhatsAppSenderAdded,
    WhatsAppSenderRemoved,
    TwilioCredentialsRotated,
    TenantSuspended,
    TenantReactivated,
)
type TenantEvent = TenantRegistered | AgentConfigured | TenantLifecycleEvent
