"""`create_app(config)`: the FastAPI application with its lifespan-owned container."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import health
from api.container import ApiConfig, Container
from projections.database import create_pool
from streams import kafka


def create_app(config: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(config.database_url)
        producer = kafka.producer(config.bootstrap_servers)
        try:
            await producer.start()
            app.state.container = Container(config, pool, producer)
            yield
        finally:
            await producer.stop()
            await pool.close()

    app = FastAPI(
        title="zapflow",
        version="0.1.0",
        summary="WhatsApp Business automation through Twilio with LLM agents.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    return app
