"""`/healthz` and `/readyz` against the real broker and database."""

from __future__ import annotations

import asyncpg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.container import ApiConfig
from projections.migrations import discover, migrate

pytestmark = pytest.mark.integration


def _client(bootstrap_servers: str, database_url: str) -> TestClient:
    config = ApiConfig(
        database_url, bootstrap_servers, public_url="http://testserver", secret_key=bytes(32)
    )
    return TestClient(create_app(config))


async def test_readyz_waits_for_migrations_then_is_ready(
    bootstrap_servers: str, database_url: str, db: asyncpg.Connection
) -> None:
    with _client(bootstrap_servers, database_url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        before = client.get("/readyz")
        assert before.status_code == 503
        assert before.json()["checks"]["broker"] == "ok"
        pending = before.json()["checks"]["migrations"]
        assert pending == f"{len(discover())} pending: " + ", ".join(m.version for m in discover())
        await migrate(db)
        after = client.get("/readyz")
        assert after.status_code == 200
        assert after.json() == {
            "status": "ready",
            "checks": {"broker": "ok", "database": "ok", "migrations": "ok"},
        }
