"""Liveness (`/healthz`) and readiness (`/readyz`: broker, database, migrations) probes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from api.container import ContainerDep
from projections.migrations import MigrationError, pending

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


@router.get("/healthz", summary="The process is up")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    summary="Broker and database reachable, migrations applied",
    responses={503: {"model": Readiness, "description": "A check failed; `checks` says which."}},
)
async def readyz(container: ContainerDep, response: Response) -> Readiness:
    timeout = container.config.probe_timeout_s
    checks = {
        "broker": await _check(_broker(container), timeout),
        "database": await _check(_database(container), timeout),
        "migrations": await _check(_migrations(container), timeout),
    }
    ready = all(value == "ok" for value in checks.values())
    response.status_code = 200 if ready else 503
    return Readiness(status="ready" if ready else "not_ready", checks=checks)


async def _check(probe: Coroutine[Any, Any, str], limit_s: float) -> str:
    try:
        result: str = await asyncio.wait_for(probe, limit_s)
    except TimeoutError:
        return f"timeout after {limit_s}s"
    except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it never raises
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return result


async def _broker(container: ContainerDep) -> str:
    producer = container.broker.producer
    if producer is None:
        return f"not connected: {container.broker.problem}"
    ok = await producer.client.fetch_all_metadata()
    return "ok" if ok is not None else "no metadata"


async def _database(container: ContainerDep) -> str:
    await container.pool.fetchval("SELECT 1")
    return "ok"


async def _migrations(container: ContainerDep) -> str:
    async with container.pool.acquire() as conn:
        try:
            todo = await pending(conn)
        except MigrationError as exc:
            return str(exc)
    return "ok" if not todo else f"{len(todo)} pending: {', '.join(m.version for m in todo)}"
