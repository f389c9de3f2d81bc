"""Twilio's webhooks: verify the signature, translate the form, make the command durable, answer.

Checks run in this order, and nothing is recorded on any refusal: unknown tenant (404), body
too large (413), signature missing (403), not a form or malformed (400), signature invalid
(403), missing parameters (400), a valid signature for another account or sender (403, tenant
confusion), an incoming message for a suspended tenant (423). A body that does not parse cannot
be verified, so it is refused as malformed. The suspension comes last: only Twilio, with the
tenant's own token, account and sender, learns that a tenant is suspended, and an unsigned
request gets the same 403 as for any tenant. Status callbacks of a suspended tenant are still
accepted: they report messages that already went out, and a report of what happened is never
dropped (ADR 0018).

The checks after the body is read rest on the tenant's cached directory row (`TenantCache`); a
refusal among them is checked once more against a fresh read (at most once a second per
tenant), so a rotated token, a new sender or a reactivation lets Twilio in at once.
"""

from __future__ import annotations

import logging
import time
from typing import Final
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.container import Container
from api.metrics import observe_http
from api.signature import SIGNATURE_HEADER, signature_is_valid, signed_url
from api.tenant_cache import TenantCredentials
from api.twilio_form import (
    FormParams,
    TwilioFormError,
    WebhookCommand,
    command_record,
    inbound_command,
    mask_address,
    parse_form,
    status_command,
)
from projections.credentials import SecretError

log = logging.getLogger("zapflow.api.webhooks")

TWIML_EMPTY: Final = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_FORM: Final = "application/x-www-form-urlencoded"
PREFIX: Final = "/v1/tenants/{tenant_id}/twilio"
TIMED_PREFIX: Final = "/v1/tenants/"

_REFUSALS: Final[dict[str, object]] = {
    str(status): {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refusal"}}},
    }
    for status, description in (
        (400, "Malformed body or missing parameters."),
        (403, "Signature missing or invalid, or not this tenant's account/sender."),
        (404, "No such tenant."),
        (413, "Body larger than the configured limit."),
    )
}
_SUSPENDED: Final[dict[str, object]] = {
    "423": {
        "description": "The tenant is suspended: the message is not taken (nothing is recorded) "
        "until the tenant is reactivated.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refusal"}}},
    }
}
_ON_DIRECTORY: Final = frozenset(
    {"signature_invalid", "account_mismatch", "sender_mismatch", "tenant_suspended"}
)
"""Refusals that rest on the cached directory row, and are checked again on a fresh read."""


class _Refused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


async def receive_message(request: Request) -> Response:
    """Twilio incoming-message webhook (WhatsApp)."""
    return await _timed(request, "messages", f"{PREFIX}/messages")


async def record_status(request: Request) -> Response:
    """Twilio message status callback."""
    return await _timed(request, "status", f"{PREFIX}/status")


async def _timed(request: Request, kind: str, template: str) -> Response:
    """The webhooks time themselves: the metrics middleware lets this prefix through unwrapped."""
    started, status = time.perf_counter(), 500
    try:
        response = await _accept(request, kind)
        status = response.status_code
        return response
    finally:
        observe_http(request.app.state.metrics, template, "POST", status,
                     time.perf_counter() - started)  # fmt: skip


# Plain Starlette routes, not FastAPI's: this is the hottest path of the platform, and FastAPI's
# per-request dependency and parameter machinery cost more than everything the handler does
# (profiled: ADR 0010). Their OpenAPI description is written out in `openapi_paths` instead.
routes: Final = [
    Route(f"{PREFIX}/messages", receive_message, methods=["POST"], name="twilio_messages"),
    Route(f"{PREFIX}/status", record_status, methods=["POST"], name="twilio_status"),
]


def openapi_paths() -> dict[str, dict[str, object]]:
    """The webhooks' OpenAPI path items (merged into the schema by `api.app`)."""

    def operation(
        summary: str, operation_id: str, description: str,
        refusals: dict[str, object] = _REFUSALS,
    ) -> dict[str, object]:  # fmt: skip
        return {
            "tags": ["twilio"],
            "summary": summary,
            "description": description,
            "operationId": operation_id,
            "parameters": [
                {
                    "name": "tenant_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                },
                {
                    "name": SIGNATURE_HEADER,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "Base64 HMAC-SHA1 of the URL and the sorted form parameters "
                    "under the tenant's Twilio auth token.",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    _FORM: {
                        "schema": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Accepted: the command is durable. Empty TwiML.",
                    "content": {"text/xml": {"example": TWIML_EMPTY}},
                },
                **refusals,
            },
        }

    return {
        f"{PREFIX}/messages": {
            "post": operation(
                "Twilio incoming-message webhook (WhatsApp)",
                "twilio_messages",
                "Configure as the sender's *A message comes in* URL. Each message is recorded "
                "once however often Twilio retries it. A suspended tenant's messages are "
                "refused (423) after the signature is verified.",
                _REFUSALS | _SUSPENDED,
            )
        },
        f"{PREFIX}/status": {
            "post": operation(
                "Twilio message status callback",
                "twilio_status",
                "Configure as the `StatusCallback` of outbound messages. A status only moves "
                "forward. Accepted for a suspended tenant too: it reports a message that "
                "already went out.",
            )
        },
    }


REFUSAL_SCHEMA: Final[dict[str, object]] = {
    "title": "Refusal",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


async def _accept(request: Request, kind: str) -> Response:
    container: Container = request.app.state.container
    raw_id: str = request.path_params["tenant_id"]
    try:
        tenant = await _tenant(container, raw_id)
        signature, params = await _form(request, container)
        try:
            command = _verified_command(request, container, tenant, signature, params, kind)
        except _Refused as refused:
            if refused.code not in _ON_DIRECTORY:
                raise
            fresh = await _fresh(container, tenant)
            if fresh is None:
                raise
            tenant = fresh
            command = _verified_command(request, container, tenant, signature, params, kind)
    except _Refused as refused:
        request.app.state.metrics.refusals.inc(kind, refused.code)
        log.info(
            "webhook refused: %s %s",
            refused.status,
            refused.code,
            extra={"tenant_id": raw_id if len(raw_id) <= 36 else raw_id[:36] + "…"},
        )
        return JSONResponse(
            {"error": refused.code, "detail": refused.detail}, status_code=refused.status
        )
    tenant_id = tenant.tenant_id
    command_id, key, value, headers = command_record(tenant_id, command, container.clock())
    route = await container.spool.submit_record(tenant_id, command_id, key, value, headers)
    request.app.state.metrics.webhooks.inc(kind, route)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s from %s accepted (%s)",
            command.type,
            command.message_sid,
            mask_address(command.contact),
            route,
            extra={"tenant_id": tenant_id, "command_id": command_id},
        )
    return Response(TWIML_EMPTY, media_type="text/xml")


async def _tenant(container: Container, raw_id: str) -> TenantCredentials:
    try:
        tenant_id = UUID(raw_id)
    except ValueError:
        raise _Refused(404, "unknown_tenant", "no such tenant") from None
    try:
        tenant = await container.tenants.get(tenant_id)
    except SecretError:  # the stored token does not open with this process's key
        raise _unreadable(tenant_id) from None
    if tenant is None:
        raise _Refused(404, "unknown_tenant", "no such tenant")
    return tenant


async def _fresh(container: Container, cached: TenantCredentials) -> TenantCredentials | None:
    """The tenant's directory row read again, if it changed since `cached` was read."""
    try:
        return await container.tenants.refresh(cached)
    except SecretError:
        raise _unreadable(cached.tenant_id) from None


def _unreadable(tenant_id: UUID) -> _Refused:
    log.exception("tenant credentials unreadable", extra={"tenant_id": tenant_id})
    return _Refused(500, "credentials_unreadable", "tenant credentials are unavailable")


async def _form(request: Request, container: Container) -> tuple[str, FormParams]:
    """The signature and the parsed form, refused when either is missing or malformed."""
    body = await _body(request, container.config.max_body_bytes)
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise _Refused(403, "signature_missing", f"{SIGNATURE_HEADER} is required")
    content_type = request.headers.get("content-type", _FORM).split(";", 1)[0].strip().lower()
    if content_type != _FORM:
        raise _Refused(400, "unsupported_content_type", f"expected {_FORM}")
    try:
        return signature, parse_form(body)
    except TwilioFormError as exc:
        raise _Refused(400, exc.code, exc.detail) from None


def _verified_command(
    request: Request, container: Container, tenant: TenantCredentials, signature: str,
    params: FormParams, kind: str,
) -> WebhookCommand:  # fmt: skip
    if not signature_is_valid(tenant.auth_token, _url(request, container), params, signature):
        raise _Refused(403, "signature_invalid", f"{SIGNATURE_HEADER} does not match")
    command = _translate(params, kind)
    if command.account_sid != tenant.record.twilio_account_sid:
        raise _Refused(403, "account_mismatch", "AccountSid is not this tenant's account")
    if command.sender not in tenant.record.senders:
        field = "To" if kind == "messages" else "From"
        raise _Refused(403, "sender_mismatch", f"{field} is not one of this tenant's senders")
    if kind == "messages" and tenant.record.suspended:
        raise _Refused(423, "tenant_suspended", "the tenant is suspended: incoming messages are "
                       "not accepted until it is reactivated")  # fmt: skip
    return command


def _translate(params: FormParams, kind: str) -> WebhookCommand:
    try:
        return inbound_command(params) if kind == "messages" else status_command(params)
    except TwilioFormError as exc:
        raise _Refused(400, exc.code, exc.detail) from None


def _url(request: Request, container: Container) -> str:
    config = container.config
    scope = request.scope
    # `request.url.path` without building the whole URL: the path as Starlette escapes it.
    path = scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    query = scope.get("query_string", b"").decode("latin-1")
    return signed_url(
        config.public_url, path, query, request.headers, trust_proxy=config.trust_proxy
    )


async def _body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes whatever Content-Length claims."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        if declared.isdigit():
            raise _Refused(413, "body_too_large", f"the limit is {limit} bytes")
        raise _Refused(400, "malformed_body", "Content-Length is not a number")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise _Refused(413, "body_too_large", f"the limit is {limit} bytes")
    return bytes(received)
