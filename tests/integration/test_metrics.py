"""`GET /metrics`: HTTP latency by route template, webhook outcomes, projector positions and lag,
and never a tenant id or a phone number in a label."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from events.chain import GENESIS, head_of, seal
from projections.migrations import migrate
from streams import kafka
from streams.log import append
from tests.builders import chain, tenant_registered
from tests.integration.test_projector import caught_up, ends, eventually, projector
from tests.integration.twilio_driver import CONTACT, add_tenant, app_client, inbound, post, sid

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )  # fmt: skip


async def test_metrics_count_requests_webhooks_and_projector_lag(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> None:
    tenant = await add_tenant(db)
    await migrate(db)
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        first = seal(tenant_registered(uuid.uuid4()), GENESIS)
        positions = await append(producer, [first, *chain(first.tenant_id, 2, head_of(first))])
    finally:
        await producer.stop()

    with app_client(fresh_broker, database_url) as client:
        client.app.state.metrics.refresh_every_s = 0  # type: ignore[attr-defined]  # every scrape
        assert post(client, tenant, inbound(tenant, sid())).status_code == 200
        forged = client.post(
            tenant.path(), data=inbound(tenant, sid()), headers={"X-Twilio-Signature": "bad"}
        )
        assert forged.status_code == 403
        before = await asyncio.to_thread(client.get, "/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        samples = _samples(before.text)
        route = "/v1/tenants/{tenant_id}/twilio/messages"
        assert _sum(samples, "zapflow_http_request_duration_seconds_count",
                    route=route, method="POST", status="200") == 1  # fmt: skip
        assert _sum(samples, "zapflow_http_request_duration_seconds_count",
                    route=route, status="403") == 1  # fmt: skip
        assert (
            _sum(samples, "zapflow_webhooks_accepted_total", kind="messages", route="broker") == 1
        )
        assert _sum(samples, "zapflow_webhooks_refused_total", code="signature_invalid") == 1
        for name in ("tenant_directory", "conversations", "event_archive"):
            assert _sum(samples, "zapflow_projection_lag", projection=name) == len(positions)
        assert _sum(samples, "zapflow_metrics_scrape_errors_total") == 0
        # No tenant id, no contact number, no raw path anywhere in the exposition.
        assert str(tenant.tenant_id) not in before.text
        assert CONTACT.removeprefix("whatsapp:") not in before.text
        assert not re.search(r"/v1/tenants/[0-9a-f]{8}-", before.text)

        async with projector(fresh_broker, database_url, "zapflow.events") as task:
            await eventually(task, caught_up(db, "zapflow.events", ends(positions)))
        after = _samples((await asyncio.to_thread(client.get, "/metrics")).text)
        for name in ("tenant_directory", "conversations"):
            assert _sum(after, "zapflow_projection_events_applied", projection=name) == len(
                positions
            )
        for name in ("tenant_directory", "conversations", "event_archive"):
            assert _sum(after, "zapflow_projection_lag", projection=name) == 0
            assert _sum(after, "zapflow_projection_next_offset", projection=name) == len(positions)
            assert _sum(after, "zapflow_projection_stopped", projection=name) == 0
