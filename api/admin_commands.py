"""What the tenant's people and key routes share: issue a command, wait for its decision.

They wait by default (bounded by `?timeout=`): an admin changing a role wants to know it was
refused (`last_owner`, `role_not_allowed`…), not a command id to poll. A command whose effect is
already so (disabling a disabled user) is decided without any event, so it has no result to
wait for: `decided` also accepts the read model showing the state asked for, and after an
acceptance it waits for the read model to show it, so a read right after a 200 sees it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal

from fastapi import Header, Query, Response
from pydantic import BaseModel, Field, ValidationError

from api import commanding
from api.container import Container
from api.errors import ApiError, ErrorBody
from events.registry import Message
from projections import read
from projections.database import Conn

MAX_WAIT_S: Final = commanding.MAX_WAIT_S
_POLL_S: Final = 0.1

type Shows = Callable[[Conn], Awaitable[bool]]
type Status = Literal["accepted", "pending"]

Timeout = Annotated[
    float,
    Query(alias="timeout", gt=0, le=MAX_WAIT_S,
          description="Seconds to wait for the decision; then 202 with `status: pending`."),
]  # fmt: skip
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200,
           description="Retries with the same key are one command."),
]  # fmt: skip


class Decision(BaseModel):
    command_id: uuid.UUID
    status: Status = Field(description="`pending`: durable, not decided (or not projected) yet.")


def responses(*codes: int, ok: type[BaseModel] | None = None) -> dict[int | str, dict[str, Any]]:
    """The documented answers: always 401 and 403, plus `codes`."""
    text = {
        400: "Malformed body or parameter; nothing issued.",
        200: "Decided and accepted.",
        202: "Durable, not decided within the timeout: `status` is `pending`.",
        404: "No such id in this tenant (another tenant's ids are unknown here).",
        409: "Refused by a business rule: `error` is the reason code (e.g. `role_not_allowed`).",
    }
    documented: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Missing, malformed or unknown credentials."},
        403: {"model": ErrorBody, "description": "Valid credentials without the permission."},
    }
    for code in codes:
        model = ErrorBody if code >= 400 else (ok or Decision)
        documented[code] = {"model": model, "description": text[code]}
    return documented


def build[M: Message](make: Callable[[], M]) -> M:
    """The command, or a 400 naming the first invalid field (nothing is issued)."""
    try:
        return make()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, "invalid_request", f"{where}: {first['msg']}".strip(": ")) from None


def command_id(tenant: uuid.UUID, kind: str, target: uuid.UUID, key: str | None) -> uuid.UUID:
    """A new id, or one derived from the `Idempotency-Key`: a retry is the same command."""
    return uuid.uuid4() if key is None else uuid.uuid5(tenant, f"{kind}:{target}:{key}")


async def decided(
    container: Container,
    tenant: uuid.UUID,
    command_id: uuid.UUID,
    wait_s: float,
    shows: Shows | None = None,
) -> Status:
    """`accepted` once decided and, given `shows`, once the read model shows it (so a read right
    after sees it), or as soon as the read model shows the state asked for (a command that finds
    it already so records nothing); `pending` at the deadline. A rejection is a 409 `ApiError`
    with the reason code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        async with read.tenant_scope(container.reader, tenant) as conn:
            result = await read.command_result(conn, tenant, command_id)
            shown = shows is not None and await shows(conn)
        if result is not None and result["outcome"] == "rejected":
            raise ApiError(409, result["reason_code"], result["reason"])
        if shown or (result is not None and shows is None):
            return "accepted"
        if loop.time() >= deadline:
            return "pending" if result is None else "accepted"
        await asyncio.sleep(_POLL_S)


async def issue(
    container: Container,
    tenant: uuid.UUID,
    message: Message,
    command_id: uuid.UUID,
    wait_s: float,
    response: Response,
    *,
    shows: Shows | None = None,
    idempotency_key: str | None = None,
) -> Decision:
    """Submit, wait, and set 200 (accepted) or 202 (pending) on `response`."""
    await commanding.submit(
        container, tenant, message, command_id=command_id, idempotency_key=idempotency_key
    )
    status = await decided(container, tenant, command_id, wait_s, shows)
    response.status_code = 200 if status == "accepted" else 202
    return Decision(command_id=command_id, status=status)
