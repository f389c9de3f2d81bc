"""The one settings model: `ZAPFLOW_*` variables, the ecosystem's standard names, and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of every process; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="ZAPFLOW_", env_file=".env", extra="ignore", frozen=True
    )

    http_host: str = Field("127.0.0.1", description="Interface the API listens on.")
    http_port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    public_url: str | None = Field(
        None, description="URL Twilio uses to reach the API (signature base). Default: local."
    )
    trust_proxy: bool = Field(False, description="Honour X-Forwarded-Proto/Host.")
    state_dir: Path = Field(Path(".zapflow"), description="Local state: PostgreSQL data, runtime.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "ZAPFLOW_DATABASE_URL"),
        description="PostgreSQL URL; unset: an embedded server under the state dir.",
    )
    app_database_url: str | None = Field(
        default=None,
        description="The query API's PostgreSQL URL, as role zapflow_app (RLS applies to it); "
        "unset: DATABASE_URL's server and database as zapflow_app without a password.",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ZAPFLOW_KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka-compatible brokers; unset: the development broker (Tansu).",
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "ZAPFLOW_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "ZAPFLOW_OPENAI_BASE_URL")
    )
    openai_model: str = Field(
        "gpt-4o-mini", min_length=1, description="The model of tenants that name none."
    )
    llm_timeout_s: float = Field(20.0, gt=0, description="Limit of each model call.")
    llm_max_retries: int = Field(2, ge=0, le=10, description="The SDK's retries of a call.")
    agent_debounce_s: float = Field(
        1.5, ge=0, description="Messages of one contact within this window are one turn."
    )
    agent_max_in_flight: int = Field(256, ge=1, le=10_000, description="Turns run at once.")
    registration_step_timeout_s: float = Field(
        30.0, gt=0, description="A registration step without an outcome is issued again then."
    )
    registration_max_reissues: int = Field(
        3, ge=0, le=100, description="Re-issues of a forward step before it counts as failed."
    )

    twilio_api_url: str | None = Field(
        default=None,
        description="Twilio's REST API base URL. Unset: `zapflow up` runs the Twilio emulator "
        "and points the sender at it; a sender outside `zapflow up` uses https://api.twilio.com.",
    )
    twilio_timeout_s: float = Field(10.0, gt=0, description="Limit of each Twilio API call.")
    twilio_settle_s: float = Field(
        15.0, ge=0,
        description="After an unanswered call's timeout, how long before the message is looked "
        "up at Twilio (it may still be processing the call) and, if absent, sent again.",
    )  # fmt: skip
    send_rate_per_sender: float = Field(
        80.0, gt=0, description="Messages per second per WhatsApp sender (excess waits)."
    )
    send_rate_per_recipient: float = Field(
        5.0, gt=0, description="Messages per second to one contact (excess waits)."
    )
    send_max_in_flight: int = Field(64, ge=1, le=10_000, description="Twilio calls at once.")

    secret_key: SecretStr | None = Field(
        default=None,
        description="Key for tenant secrets at rest (urlsafe base64 of 32 bytes). Unset: "
        "`zapflow up` creates <state_dir>/secret.key once and every command there uses it.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the platform-admin API (/v1/admin/...). Unset: derived "
        "from the secret key; `zapflow admin token` prints it.",
    )
    jwt_algorithm: Literal["HS256", "EdDSA"] = Field(
        "HS256", description="How users' access tokens are signed."
    )
    jwt_key: SecretStr | None = Field(
        default=None,
        description="HS256: a secret of at least 32 bytes; EdDSA: an Ed25519 private key (PEM). "
        "Unset: an HS256 secret derived from the secret key.",
    )
    jwt_audience: str = Field("zapflow-api", min_length=1, description="Tokens' `aud` claim.")
    jwt_issuer: str = Field("zapflow", min_length=1, description="Tokens' `iss` claim.")
    access_token_ttl_s: int = Field(900, ge=30, le=86_400, description="Access token lifetime.")
    refresh_token_ttl_s: int = Field(
        14 * 86_400, ge=60, le=90 * 86_400, description="Refresh token lifetime."
    )
    auth_cache_ttl_s: float = Field(
        5.0, ge=0, le=300,
        description="How long the API trusts a key or membership lookup; revoking a key, "
        "disabling a user or changing a role applies within it.",
    )  # fmt: skip
    webhook_max_body_bytes: int = Field(65536, ge=1024, description="Larger webhooks get 413.")
    produce_timeout_s: float = Field(
        2.0, gt=0, description="Webhook produce wait before the command is spooled instead."
    )

    topic_partitions: int = Field(12, ge=1, le=1024, description="Partitions of each topic.")
    topic_replication: int = Field(1, ge=1, le=7, description="Replication factor of topics.")
    broker_port: int = Field(0, ge=0, le=65535, description="Dev broker port; 0 picks a free one.")
    postgres_port: int = Field(
        0, ge=0, le=65535, description="Embedded PostgreSQL port; 0 reuses the last or picks one."
    )
    instance_id: str | None = Field(
        default=None, description="Static group membership id of this host's workers."
    )
    group_session_timeout_ms: int = Field(
        10_000, ge=1000, description="Consumer-group session timeout of the workers."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Fail-fast limit for dependencies.")
    shutdown_grace_s: float = Field(10.0, gt=0, description="SIGTERM → SIGKILL grace period.")

    @field_validator(
        "database_url", "kafka_bootstrap_servers", "openai_base_url", "public_url", "twilio_api_url"
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("openai_api_key", "secret_key", "admin_token", "jwt_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: object) -> object:
        return value or None

    @property
    def secret_key_file(self) -> Path:
        return self.state_dir / "secret.key"

    @property
    def runtime_file(self) -> Path:
        return self.state_dir / "runtime.json"

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://localhost:{self.http_port}").rstrip("/")
