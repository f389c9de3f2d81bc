"""The ASGI apps the HTTP scenarios serve with uvicorn in a subprocess (configured by env vars)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

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
    try:
        yield
    finally:
        if producer is not None:
            await producer.stop()


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
