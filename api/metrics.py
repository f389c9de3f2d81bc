"""`GET /metrics` in Prometheus' text format: HTTP latency, webhooks, projector positions and lag.

Labels never carry a tenant id, a phone number or a raw path: requests are labelled by their
route template (`/v1/tenants/{tenant_id}/twilio/messages`), so a flood of made-up URLs cannot
grow the series without bound. Projector figures are read at scrape time from PostgreSQL (the
checkpoints and stops the projector writes) and the log's high watermarks (never
`end_offsets()`, which the development broker gets wrong), so they are right whichever process
projects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.container import Container
from projections import status, versions
from projections.batch import checkpoint_names
from streams import kafka
from streams.topics import EVENTS

log = logging.getLogger("zapflow.api.metrics")

_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SCRAPE_TIMEOUT_S: Final = 5.0
_REFRESH_EVERY_S: Final = 5.0


class Metrics:
    """The API process's series, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = Histogram(
            "zapflow_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ("route", "method", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.webhooks = Counted(
            Counter(
                "zapflow_webhooks_accepted",
                "Webhooks made durable, by kind and where they went (broker or spool).",
                ("kind", "route"),
                registry=self.registry,
            )
        )
        self.refusals = Counted(
            Counter(
                "zapflow_webhooks_refused",
                "Webhooks refused, by kind and reason code.",
                ("kind", "code"),
                registry=self.registry,
            )
        )
        self.position = Gauge(
            "zapflow_projection_next_offset",
            "The next offset each projection will apply, per partition of zapflow.events.",
            ("projection", "partition"),
            registry=self.registry,
        )
        self.lag = Gauge(
            "zapflow_projection_lag",
            "Records of zapflow.events not yet applied, per projection and partition.",
            ("projection", "partition"),
            registry=self.registry,
        )
        self.stopped = Gauge(
            "zapflow_projection_stopped",
            "1 while a projection is stopped on a partition (poison or a reset log).",
            ("projection", "partition"),
            registry=self.registry,
        )
        self.applied = Gauge(
            "zapflow_projection_events_applied",
            "Events each projection has taken in (applied, or passed over as not its concern; "
            "duplicates not counted), summed over tenants; rate() gives events per second.",
            ("projection",),
            registry=self.registry,
        )
        self._http_children: dict[tuple[str, str, str], Any] = {}
        # One refresh at a time, reused for a few seconds: scrapes are unauthenticated, and each
        # refresh reads the broker and the database.
        self.refresh_lock = asyncio.Lock()
        self.refreshed_at = float("-inf")
        self.refresh_every_s = _REFRESH_EVERY_S
        self.scrape_errors = Counter(
            "zapflow_metrics_scrape_errors",
            "Scrapes whose projector figures could not be read (broker or database away).",
            registry=self.registry,
        )


def observe_http(metrics: Metrics, template: str, method: str, status: int, seconds: float) -> None:
    """One request's latency (children cached: `labels()` is costly on a hot path)."""
    key = (template, method, str(status))
    child = metrics._http_children.get(key)
    if child is None:
        child = metrics._http_children[key] = metrics.http.labels(*key)
    child.observe(seconds)


class Counted:
    """A labelled counter whose children are kept, so a hot path pays a dict lookup."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._children: dict[tuple[str, ...], Any] = {}

    def inc(self, *labels: str) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.counter.labels(*labels)
        child.inc()


class HttpMetrics:
    """Pure ASGI middleware timing every HTTP request (cheaper than `BaseHTTPMiddleware`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, timed_inside: str) -> None:
        self.app = app
        self.metrics = metrics
        # Routes under this prefix (the webhooks) time themselves, without this layer's wrapper.
        self.timed_inside = timed_inside

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.timed_inside):
            await self.app(scope, receive, send)
            return
        started, code = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            observe_http(
                self.metrics, template, scope["method"], code, time.perf_counter() - started
            )


async def metrics_endpoint(request: Request) -> Response:
    """The Prometheus exposition (projector figures refreshed for this scrape)."""
    container: Container = request.app.state.container
    metrics: Metrics = request.app.state.metrics
    try:
        async with metrics.refresh_lock:
            if time.monotonic() - metrics.refreshed_at >= metrics.refresh_every_s:
                await asyncio.wait_for(_refresh_projector(container, metrics), _SCRAPE_TIMEOUT_S)
                metrics.refreshed_at = time.monotonic()
    except (OSError, TimeoutError, RuntimeError, ConnectionError) as exc:
        metrics.scrape_errors.inc()
        log.warning("projector figures unavailable for this scrape: %s", exc)
    except Exception as exc:  # noqa: BLE001 - a scrape must answer; the rest still counts
        metrics.scrape_errors.inc()
        log.warning("projector figures unavailable for this scrape: %r", exc)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _refresh_projector(container: Container, metrics: Metrics) -> None:
    async with container.pool.acquire() as conn:
        names = checkpoint_names(await versions.live(conn))
    consumer = kafka.groupless_consumer(
        container.config.bootstrap_servers, max_partition_fetch_bytes=64 * 1024
    )
    try:
        await consumer.start()
        partitions = await status.topic_partitions(consumer, EVENTS)
        async with container.pool.acquire() as conn:  # not held while the broker answers
            starts = await status.starts(conn, EVENTS, names)
        ends = await status.log_ends(consumer, EVENTS, partitions, starts)
        async with container.pool.acquire() as conn:
            rows = await status.read(conn, EVENTS, ends, names)
            applied = await conn.fetch(
                "SELECT projection, sum(last_seq) AS events FROM projection_tenant_seq "
                "WHERE projection = ANY($1::text[]) GROUP BY projection",
                names,
            )
    finally:
        await consumer.stop()
    for total in applied:
        metrics.applied.labels(total["projection"]).set(total["events"])
    for row in rows:
        labels = (row.projection, str(row.partition))
        metrics.position.labels(*labels).set(row.next_offset)
        metrics.lag.labels(*labels).set(row.lag)
        metrics.stopped.labels(*labels).set(1 if row.state == "stopped" else 0)
