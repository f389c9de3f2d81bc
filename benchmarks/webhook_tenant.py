"""A tenant for the webhook-ingest scenario: in the directory, with a signature for the body."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass

from twilio.request_validator import RequestValidator

from benchmarks.http_apps import PUBLIC_URL
from benchmarks.http_bench import Target
from benchmarks.loadgen import SAMPLE, twilio_form
from projections.credentials import encrypt_secret
from projections.database import connect


@dataclass(frozen=True, slots=True)
class WebhookTenant:
    target: Target
    secret_key: str
    """urlsafe base64, for the API subprocess."""


async def webhook_tenant(database_url: str) -> WebhookTenant:
    """Insert a tenant the way the directory projection does; sign the load generator's body."""
    key, token, tenant_id = secrets.token_bytes(32), secrets.token_hex(16), uuid.uuid4()
    form = twilio_form(SAMPLE)
    conn = await connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO tenants (tenant_id, name, twilio_account_sid, "
            "twilio_auth_token_encrypted, api_key_sha256, registered_at, updated_seq) "
            "VALUES ($1, 'bench', $2, $3, $4, now(), 1)",
            tenant_id, form["AccountSid"], encrypt_secret(key, token, tenant_id),
            secrets.token_hex(32),
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO tenant_senders (tenant_id, sender) VALUES ($1, $2)", tenant_id, form["To"]
        )
    finally:
        await conn.close()
    path = f"/v1/tenants/{tenant_id}/twilio/messages"
    signature = RequestValidator(token).compute_signature(PUBLIC_URL + path, form)
    target = Target("webhook", "zapflow", path, form=True,
                    headers=(f"X-Twilio-Signature: {signature}",))  # fmt: skip
    return WebhookTenant(target, base64.urlsafe_b64encode(key).decode())
