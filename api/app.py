"""`create_app(config)`: the FastAPI application with its lifespan-owned container."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response

from api import (
    admin,
    admin_registration,
    audit,
    errors,
    health,
    keys,
    me,
    metrics,
    operator,
    people,
    queries,
    registrations,
    sessions,
    webhooks,
)
from api.auth import Authenticator
from api.broker import BrokerLink
from api.container import ApiConfig, Clock, Container, utc_now
from api.spool import CommandSpool
from api.tenant_cache import TenantCache
from projections.database import create_pool

log = logging.getLogger("zapflow.api")


def _watched(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A background task whose unexpected death is logged at once, not at shutdown."""

    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.critical("%s stopped: %r; spooled commands wait for a restart", name, error)

    task = asyncio.create_task(work, name=name)
    task.add_done_callback(report)
    return task


def create_app(config: ApiConfig, *, clock: Clock = utc_now) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(config.database_url)
        # Lazy (min_size=0): the role only exists once the migrations ran, and the API must
        # start (and answer /readyz "not ready") before that.
        reader = await create_pool(config.reader_url, min_size=0)
        broker = BrokerLink(config.bootstrap_servers)
        spool = CommandSpool(pool, broker, produce_timeout_s=config.produce_timeout_s)
        tasks: list[asyncio.Task[None]] = []
        try:
            # One bounded attempt now; if the broker is down the API starts anyway and spools.
            if not await broker.try_connect(config.probe_timeout_s):
                tasks.append(_watched(broker.keep_connecting(), "broker connector"))
            await spool.recover()
            tasks.append(_watched(spool.relay(), "spool relay"))
            tenants = TenantCache(pool, config.secret_key, ttl_s=config.tenant_ttl_s)
            authenticator = Authenticator(
                pool,
                reader,
                config.tokens,
                config.platform_admin_token,
                ttl_s=config.auth_cache_ttl_s,
            )
            app.state.container = Container(
                config, pool, broker, spool, tenants, reader, authenticator, clock
            )
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await broker.close()
            await reader.close()
            await pool.close()

    app = FastAPI(
        title="zapflow",
        version="0.1.0",
        summary="WhatsApp Business automation through Twilio with LLM agents.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.state.metrics = metrics.Metrics()
    app.add_middleware(
        metrics.HttpMetrics, metrics=app.state.metrics, timed_inside=webhooks.TIMED_PREFIX
    )
    app.add_api_route(
        "/metrics",
        metrics.metrics_endpoint,
        methods=["GET"],
        response_class=Response,
        tags=["operations"],
        summary="Prometheus metrics: HTTP latency, webhooks, projector positions and lag",
        responses={200: {"content": {"text/plain": {}}}},
    )
    app.include_router(health.router)
    app.include_router(queries.router)
    app.include_router(operator.router)
    app.include_router(audit.router)
    app.include_router(registrations.router)
    app.include_router(sessions.router)
    app.include_router(people.router)
    app.include_router(keys.router)
    app.include_router(me.router)
    app.include_router(admin_registration.router)
    app.include_router(admin.router)
    # First: the hottest path should not be matched against every other route before it.
    app.router.routes[:0] = webhooks.routes
    _document_webhooks(app)
    return app


def _document_webhooks(app: FastAPI) -> None:
    """Add the webhooks (plain Starlette routes, see `api.webhooks`) to the OpenAPI schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("paths", {}).update(webhooks.openapi_paths())
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Refusal"] = webhooks.REFUSAL_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
