"""The ASGI apps the HTTP scenarios serve with uvicorn in a subprocess (configured by env vars)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response

ENV_BOOTSTRAP: Final = "ZAPFLOW_BENCH_BOOTSTRAP_SERVERS"
ENV_TOPIC: Final = "ZAPFLOW_BENCH_TOPIC"
ENV_DATABASE_URL: Final = "ZAPFLOW_BENCH_DATABASE_URL"
ENV_SECRET_KEY: Final = "ZAPFLOW_BENCH_SECRET_KEY"
PUBLIC_URL: Final = "http://127.0.0.1"
TWIML_EMPTY: Final = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@asynccontextmanager
async def _bare_lifespan(app: FastAPI) -> AsyncIterator[None]:
    bootstrap = os.environ.get(ENV_BOOTSTRAP)
    producer: AIOKafkaProducer | None = None
    if bootstrap:
        # The same producer settings as `streams.kafka.producer`, built with plain aiokafka.
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=2
        )
        await producer.start()
    app.state.producer = producer
    app.state.topic = os.environ.get(ENV_TOPIC, "bench.http")
    database_url = os.environ.get(ENV_DATABASE_URL)
    pool = None
    if database_url:
        pool = await asyncpg.create_pool(  # as the API's pool: no statement cache
            database_url, min_size=1, max_size=10, statement_cache_size=0
        )
    app.state.pool = pool
    try:
        yield
    finally:
        if producer is not None:
            await producer.stop()
        if pool is not None:
            await pool.close()


bare_app = FastAPI(lifespan=_bare_lifespan, openapi_url=None, docs_url=None, redoc_url=None)


async def _parsed_form(request: Request) -> dict[str, str]:
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if "MessageSid" not in fields or "From" not in fields:
        raise ValueError("not a Twilio message form")
    return fields


@bare_app.get("/ping")
async def ping() -> dict[str, str]:
    """The bare counterpart of zapflow's `GET /healthz`."""
    return {"status": "ok"}


@bare_app.post("/form")
async def form(request: Request) -> Response:
    """Parse a Twilio-like webhook form and answer with empty TwiML."""
    await _parsed_form(request)
    return Response(TWIML_EMPTY, media_type="application/xml")


@bare_app.post("/form-produce")
async def form_produce(request: Request) -> Response:
    """As `/form`, plus one produce awaited until acked by all in-sync replicas."""
    fields = await _parsed_form(request)
    producer: AIOKafkaProducer = request.app.state.producer
    future = await producer.send(
        request.app.state.topic, orjson.dumps(fields), key=fields["From"].encode()
    )
    await future
    return Response(TWIML_EMPTY, media_type="application/xml")


_PAGE_SQL: Final = """
SELECT conversation_id, contact, sender, state, owner, opted_out, window_open_until,
       last_message_at, last_message_preview, unread_count, started_at, updated_at
FROM conversations WHERE tenant_id = $1
ORDER BY updated_at DESC, conversation_id DESC LIMIT $2
"""


@bare_app.get("/conversations/{tenant_id}")
async def conversations(request: Request, tenant_id: uuid.UUID, limit: int = 50) -> Response:
    """The bare counterpart of `GET /v1/conversations`: the same SELECT on a plain pool (no
    key, no role, no row-level security, no cursor, no response model)."""
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        rows = await conn.fetch(_PAGE_SQL, tenant_id, limit + 1)
    items = [dict(row) for row in rows[:limit]]
    # `default=str`: asyncpg's UUID subclass is not one orjson serialises natively.
    body = orjson.dumps({"items": items}, default=str)
    return Response(body, media_type="application/json")


def zapflow_app() -> FastAPI:
    """zapflow's own API (`api.app.create_app`) against the benchmark's broker and database."""
    from api.app import create_app  # imported here: only the uvicorn subprocess needs the API
    from api.container import ApiConfig

    config = ApiConfig(
        database_url=os.environ[ENV_DATABASE_URL],
        bootstrap_servers=os.environ[ENV_BOOTSTRAP],
        public_url=PUBLIC_URL,
        secret_key=base64.urlsafe_b64decode(os.environ[ENV_SECRET_KEY]),
    )
    return create_app(config)
