"""`GET /v1/audit/events`: a tenant's events as NDJSON, checked against its hash chain as they
stream (issue #7; the procedure for auditors is docs/audit.md).

Tenant-scoped by the credential exactly like the query endpoints: its tenant is the only one
read, and records of other tenants are dropped before anything else (`streams.replay`). It
needs the `admin` permission (an admin's or owner's token, a key with the `admin` scope, the
tenant's registration key; ADR 0019).

The body is what `zapflow replay` writes: one event per line, each the record value exactly as
it is on the log, then one last line `{"manifest": {…}}`, the manifest `zapflow replay --out`
writes beside an export (`verified`, `issues`, `count`, first/last, `chain_head`, `sha256` of
the lines before it). The status (200) is sent before the chain is checked to its end, so the
trailer is the verdict; a response without it was cut short. `zapflow verify` reads a saved
response as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.auth import AdminTenant
from api.container import Container
from api.errors import ApiError, ErrorBody
from streams.audit_export import TRAILER_KEY, ExportLines, manifest
from streams.replay import ArchiveSource, LogSource, Replay, Selection, Source, SourceError
from streams.replay import parse_instant as _parse_instant
from streams.topics import EVENTS

router = APIRouter(prefix="/v1/audit", tags=["audit"])

NDJSON: Final = "application/x-ndjson"
OPEN_TIMEOUT_S: Final = 10.0
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {}},
        "description": "One event envelope per line (the record value as on the log), then "
        '`{"manifest": {…}}` with the verification outcome.',
    },
    400: {"model": ErrorBody, "description": "A malformed instant or an unknown event type."},
    401: {"model": ErrorBody, "description": "Missing, malformed or unknown API key."},
    503: {"model": ErrorBody, "description": "The log (or the archive) cannot be read now."},
}


def _instant(name: str, text: str | None) -> datetime | None:
    try:
        return _parse_instant(text) if text is not None else None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{name}: {exc}") from None


def _selection(
    tenant: UUID, conversation: str | None, since: str | None, until: str | None, types: str | None
) -> Selection:
    names = None
    if types is not None:
        names = frozenset(name.strip() for name in types.split(",") if name.strip())
    try:
        return Selection(tenant, conversation or None, _instant("since", since),
                         _instant("until", until), names)  # fmt: skip
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"types: {exc}") from None


async def _open(
    container: Container, tenant: UUID, source: str
) -> tuple[Source, Callable[[], Awaitable[None]]]:
    """The source, opened (so an unreachable one is a 503, not a truncated 200), and its close."""
    if source == "archive":
        conn = await container.pool.acquire()
        archive = ArchiveSource(conn, EVENTS, tenant)

        async def release() -> None:
            await container.pool.release(conn)

        try:
            await archive.count()
        except BaseException:
            await release()
            raise
        return archive, release
    log = LogSource(container.config.bootstrap_servers, EVENTS, tenant)
    try:
        await asyncio.wait_for(log.open(), OPEN_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError, SourceError) as exc:
        await log.close()
        raise ApiError(503, "log_unavailable", f"the event log cannot be read now ({exc})") from exc
    return log, log.close


@router.get(
    "/events",
    summary="A tenant's events as NDJSON, hash chain verified while streaming (audit replay)",
    response_class=StreamingResponse,
    responses=_RESPONSES,
)
async def audit_events(
    request: Request,
    tenant: AdminTenant,
    conversation: Annotated[
        str | None, Query(max_length=200, description="A conversation id, or whatsapp:+E164.")
    ] = None,
    since: Annotated[
        str | None, Query(description="RFC 3339 (or a date): from the first event recorded then.")
    ] = None,
    until: Annotated[
        str | None, Query(description="RFC 3339 (or a date): up to the first event recorded then.")
    ] = None,
    types: Annotated[
        str | None, Query(max_length=2000, description="Event types, comma-separated.")
    ] = None,
    source: Literal["log", "archive"] = "log",
) -> StreamingResponse:
    selection = _selection(tenant, conversation, since, until, types)
    container: Container = request.app.state.container
    opened, close = await _open(container, tenant, source)
    closed = False

    async def close_once() -> None:
        nonlocal closed
        if not closed:
            closed = True
            await close()

    async def body() -> AsyncIterator[bytes]:
        lines, replay = ExportLines(), Replay(selection, opened)
        error = None
        try:
            async for emitted in replay.emitted():
                if emitted:
                    yield lines.lines(emitted)
        except (SourceError, KafkaError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        finally:
            with contextlib.suppress(Exception):
                await close_once()
        trailer = manifest(replay, lines.sha256, container.clock())
        if error is not None:
            trailer.update(verified=False, error=f"the replay stopped early: {error}")
        yield orjson.dumps({TRAILER_KEY: trailer}) + b"\n"

    # Also after a client that left before the body started: the consumer is closed either way.
    return StreamingResponse(body(), media_type=NDJSON, background=BackgroundTask(close_once))
