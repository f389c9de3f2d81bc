"""`python -m benchmarks [--quick] [--out PATH]`: run every scenario and rewrite BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import decider_bench as db
from benchmarks import e2e_bench as e2e
from benchmarks import kafka_bench as kb
from benchmarks import projector_bench as pb
from benchmarks import replay_bench, restore_bench
from benchmarks.http_bench import CONCURRENCY, Load, run_http
from benchmarks.infra import PARTITIONS, Infra, create_topic, infrastructure
from benchmarks.pg_bench import ROWS_PER_TRANSACTION, upsert_rates
from benchmarks.query_tenant import PAGE, QueryTenant, query_tenant
from benchmarks.rebuild_bench import rebuild_run
from benchmarks.report import Row, Samples, fmt, load_average, render, write
from benchmarks.restore_bench import restore_run
from benchmarks.webhook_tenant import webhook_tenant

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


@dataclass(frozen=True, slots=True)
class Plan:
    """How much work each scenario does."""

    name: str
    events: int
    repeats: int
    pg_rows: int
    http_seconds: float
    http_rounds: int
    rebuild_events: int
    conversations: int
    e2e: e2e.E2EPlan

    def describe(self) -> str:
        return (
            f"{self.name}: {self.events:,} events and {self.pg_rows:,} rows per run, "
            f"{self.repeats} run(s) each; rebuild of {self.rebuild_events:,} events; "
            f"HTTP {self.http_seconds:.0f} s per endpoint in {self.http_rounds} interleaved "
            f"round(s), {CONCURRENCY} connections, {self.conversations:,} conversations; "
            f"{self.e2e.describe()}"
        )


REPLAY_REPEATS = 5
FULL = Plan("full run", events=50_000, repeats=3, pg_rows=100_000, http_seconds=8, http_rounds=3,
            rebuild_events=1_000_000, conversations=100_000, e2e=e2e.E2E_FULL)  # fmt: skip
QUICK = Plan("quick run", events=20_000, repeats=1, pg_rows=20_000, http_seconds=3, http_rounds=1,
             rebuild_events=50_000, conversations=20_000, e2e=e2e.E2E_QUICK)  # fmt: skip


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _runs(ours: Samples, baseline: Samples) -> str:
    if len(ours.values) < 2:
        return "1 run each"
    return f"medians of {len(ours.values)} runs (ours {ours.range()}, baseline {baseline.range()})"


async def _kafka(infra: Infra, plan: Plan) -> list[Row]:
    servers = infra.bootstrap_servers
    warmup = await create_topic(infra, "warmup")
    produce, append = Samples("events/s"), Samples("events/s")
    replay_topic, raw_size, envelope_size = "", 0.0, 0.0
    for run in range(plan.repeats):
        _say(f"log append, run {run + 1}/{plan.repeats}")
        raw = await kb.raw_produce(servers, await create_topic(infra, "raw"), warmup, plan.events)
        topic = await create_topic(infra, "append")
        ours = await kb.zapflow_append(servers, topic, warmup, plan.events)
        produce.add(raw.per_s)
        append.add(ours.per_s)
        replay_topic, raw_size, envelope_size = (
            replay_topic or topic,
            raw.value_bytes,
            ours.value_bytes,
        )
    consume, replay = Samples("events/s"), Samples("events/s")
    for run in range(plan.repeats):
        _say(f"log replay, run {run + 1}/{plan.repeats}")
        consume.add((await kb.raw_consume(servers, replay_topic, plan.events)).per_s)
        replay.add((await kb.zapflow_replay(servers, replay_topic, plan.events)).per_s)
    setup = f"{PARTITIONS} partitions, {kb.TENANTS} tenants, {plan.events:,} events per run"
    return [
        Row(
            "Event append: build EventDraft, `chain.seal`, `streams.log.append` (acks=all)",
            append.median,
            produce.median,
            "events/s",
            "higher",
            f"baseline: raw aiokafka produce, acks=all, no idempotence, linger 5 ms, "
            f"{raw_size:.0f} B values, send futures gathered per {kb.BATCH}; ours: "
            f"{envelope_size:.0f} B envelopes, same linger and batching; {setup}; "
            f"{_runs(append, produce)}",
        ),
        Row(
            "Group-less replay: `streams.log.read_all` (decode_event) + `ChainVerifier.feed`",
            replay.median,
            consume.median,
            "events/s",
            "higher",
            f"baseline: raw aiokafka consume (assign, seek_to_beginning, getmany "
            f"max_records {kb.FETCH_RECORDS}) of the same {envelope_size:.0f} B records, timed "
            f"from assign as `read_all` is; ours verified every tenant chain (0 issues); "
            f"{_runs(replay, consume)}",
        ),
    ]


async def _decider(infra: Infra, plan: Plan) -> list[Row]:
    ours, raw = Samples("commands/s"), Samples("commands/s")
    count = plan.events // 2
    for run in range(plan.repeats):
        _say(f"decider, run {run + 1}/{plan.repeats}")
        topic, total = await db.produce_commands(infra, count)
        raw.add((await db.raw_loop_rate(infra, topic, total)).per_s)
        ours.add((await db.decider_rate(infra, topic, total)).per_s)
    return [
        Row(
            "Decider: `streams.decider` (decode, decide, seal, append acks=all with a command's "
            "events never split across record batches, commit)",
            ours.median,
            raw.median,
            "commands/s",
            "higher",
            f"baseline: raw aiokafka consume → produce (acks=all) → commit of the same records; "
            f"{count:,} inbound commands + {db.TENANTS} registrations, {db.TENANTS} tenants x "
            f"{db.CONVERSATIONS_PER_TENANT} conversations; timed from the first committed batch "
            f"(group join excluded) for both; target ≥ 10,000/s per process; {_runs(ours, raw)}",
        )
    ]


async def _projector(infra: Infra, plan: Plan) -> list[Row]:
    ours, same, raw = Samples("events/s"), Samples("events/s"), Samples("events/s")
    described = ""
    for run in range(plan.repeats):
        _say(f"projector, run {run + 1}/{plan.repeats}")
        events = pb.decided_events(plan.events // 2)
        described = pb.describe(events)
        raw.add((await pb.raw_rate(infra.database_url, events)).per_s)
        same.add((await pb.same_rows_rate(infra.database_url, events)).per_s)
        ours.add((await pb.projector_rate(infra, events)).per_s)
    name = (
        "Projector: `projections.runner` (archive, tenant directory, conversation read "
        "models under RLS, checkpoints; one transaction per partition batch)"
    )
    timed = (
        "ours timed from start until every checkpoint reached the log end, "
        f"{pb.CONNECTIONS} connections; events: {described}"
    )
    return [
        Row(
            name,
            ours.median,
            same.median,
            "events/s",
            "higher",
            "baseline: raw asyncpg `executemany` of the same rows (archive row, conversation and "
            "contact rows, message row, one conversation update per message) into copies of the "
            "same tables and indexes, without RLS, decoding or checkpoints, "
            f"{pb.ROWS_PER_TRANSACTION:,} events per transaction; {timed}; target ≥ 0.3x; "
            f"{_runs(ours, same)}",
        ),
        Row(
            f"{name}, vs one row per event",
            ours.median,
            raw.median,
            "events/s",
            "higher",
            "baseline: raw asyncpg `executemany` of ONE row per event (id, tenant, seq, jsonb), "
            f"{pb.ROWS_PER_TRANSACTION:,} per transaction: what a projector writing a single "
            "narrow table could reach; ours writes 4 tables and 9 index entries per message "
            f"event (full-text included); {_runs(ours, raw)}",
        ),
    ]


async def _postgres(infra: Infra, plan: Plan) -> list[Row]:
    _say("PostgreSQL upsert")
    rates = Samples("rows/s", await upsert_rates(infra.database_url, plan.pg_rows, plan.repeats))
    return [
        Row(
            "PostgreSQL upsert: asyncpg `executemany` INSERT … ON CONFLICT DO NOTHING",
            rates.median,
            rates.median,
            "rows/s",
            "higher",
            f"baseline for the projector (read-side issue); {ROWS_PER_TRANSACTION:,} rows per "
            f"transaction, 4 columns incl. jsonb, {plan.pg_rows:,} rows per run; "
            f"{rates.spread()}",
        )
    ]


async def _replay(infra: Infra, plan: Plan) -> list[Row]:
    # Five runs at least: a run takes seconds, and single runs of either side vary by ±15 %.
    repeats = max(plan.repeats, REPLAY_REPEATS)
    _say(f"audit replay of a {plan.events:,}-event tenant ({repeats} run(s))")
    events = replay_bench.tenant_events(plan.events)
    ours, raw = Samples("events/s"), Samples("events/s")
    for _ in range(repeats):
        mine, bare = await replay_bench.replay_rates(infra, events)
        ours.add(mine.per_s)
        raw.add(bare.per_s)
    return [
        Row(
            "Audit replay: `zapflow replay --out` core (group-less read of the tenant's "
            "partition, hash chain verified, NDJSON + manifest written)",
            ours.median,
            raw.median,
            "events/s",
            "higher",
            "baseline: raw aiokafka consume (assign, seek 0, getmany 2000) of the same partition "
            f"in the same run; {replay_bench.describe(events)}; target >= 0.5x; "
            f"{_runs(ours, raw)}",
        )
    ]


async def _restore(infra: Infra, plan: Plan) -> list[Row]:
    _say(f"restore of {plan.rebuild_events:,} archived events (archiving them first)")
    run = await restore_run(infra, plan.rebuild_events)
    return [
        Row(
            f"Restore: `zapflow log restore` of {run.events:,} archived events into an empty "
            "log (read back in offset order, each batch checked to land at its offset)",
            run.ours.per_s,
            run.baseline.per_s,
            "events/s",
            "higher",
            f"ours: {run.events:,} events in {run.ours.seconds:,.1f} s; baseline: raw aiokafka "
            "send_batch of the same records from memory in batches of the same size, same "
            f"partitions; {restore_bench.UNIQUE_EVENTS:,} decided events repeated in the archive "
            f"(a restore copies bytes undecoded); filling the archive took {run.archive_s:,.0f} s"
            "; one run",
        )
    ]


async def _rebuild(infra: Infra, plan: Plan) -> list[Row]:
    _say(f"rebuild of {plan.rebuild_events:,} events (publishing them first)")
    run = await rebuild_run(infra, plan.rebuild_events)
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in run.kinds.most_common())
    return [
        Row(
            f"Rebuild: `zapflow projections rebuild conversations` over {run.events:,} events "
            "(new version's schema, its own projector from offset 0, caught up, swap)",
            run.ours.per_s,
            run.baseline.per_s,
            "events/s",
            "higher",
            f"ours: {run.events:,} events in {run.ours.seconds:,.1f} s, version "
            f"{run.version} swapped in; baseline: raw asyncpg `executemany` of the same "
            f"read-model rows (no archive: a rebuild does not write one) for the first "
            f"{run.baseline.commands:,} of those events, into copies of the tables; events: "
            f"{kinds}; one run (publishing the log took {run.publish_s:,.0f} s)",
        )
    ]


def _query_rows(loads: dict[str, Load], seeded: QueryTenant) -> list[Row]:
    ours, bare = loads["conversations"], loads["conversations_bare"]
    where = (
        f"{seeded.conversations:,} conversations of the tenant, {seeded.in_table:,} in the table"
    )
    return [
        Row(
            f"Query API: `GET /v1/conversations?limit={PAGE}` latency p99 ({where})",
            ours.percentile_ms(0.99),
            bare.percentile_ms(0.99),
            "ms",
            "lower",
            "baseline: bare FastAPI GET running the same SELECT on a plain pool (no API key, "
            f"no role switch or RLS, no cursor, no response model); ours: {ours.summary()}; "
            f"baseline: {bare.summary()}",
        ),
        Row(
            f"Query API: `GET /v1/conversations?limit={PAGE}` throughput ({where})",
            ours.rps,
            bare.rps,
            "req/s",
            "higher",
            "same endpoints as the row above",
        ),
    ]


def _http_rows(loads: dict[str, Load]) -> list[Row]:
    form, produce, get, healthz = (loads[k] for k in ("form", "form_produce", "get", "healthz"))
    webhook = loads["webhook"]
    target = 0.9 * produce.rps
    return [
        Row(
            "Webhook ingest: `POST /v1/tenants/{id}/twilio/messages` (signature, tenant checks, "
            "command, produce acks=all, TwiML)",
            webhook.rps,
            produce.rps,
            "req/s",
            "higher",
            f"baseline: bare FastAPI form POST + one raw produce, same body, same run; target "
            f"≥ 0.9x; ours: {webhook.summary()}",
        ),
        Row(
            "Webhook ingest: latency p99 vs bare form POST + produce",
            webhook.percentile_ms(0.99),
            produce.percentile_ms(0.99),
            "ms",
            "lower",
            f"target ≤ 2x; p50 {webhook.percentile_ms(0.5):.1f} ms vs "
            f"{produce.percentile_ms(0.5):.1f} ms",
        ),
        Row(
            "HTTP: bare FastAPI, Twilio-like form POST (16 fields) → 200",
            form.rps,
            form.rps,
            "req/s",
            "higher",
            f"baseline; {form.summary()}",
        ),
        Row(
            "HTTP: bare FastAPI form POST + one raw aiokafka produce (acks=all) → 200",
            produce.rps,
            form.rps,
            "req/s",
            "higher",
            f"vs the bare form POST; {produce.summary()}; the webhook ingest must reach "
            f"0.9 x this = {fmt(target)} req/s",
        ),
        Row(
            "HTTP: latency p99, form POST + produce vs bare form POST",
            produce.percentile_ms(0.99),
            form.percentile_ms(0.99),
            "ms",
            "lower",
            f"p50 {produce.percentile_ms(0.5):.1f} ms vs {form.percentile_ms(0.5):.1f} ms",
        ),
        Row(
            "HTTP: zapflow `GET /healthz` (`api.app.create_app`, real broker + database)",
            healthz.rps,
            get.rps,
            "req/s",
            "higher",
            f"baseline: bare FastAPI GET returning the same JSON ({get.summary()}); "
            f"ours: {healthz.summary()}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to write")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the database is dropped and every child is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = QUICK if args.quick else FULL
    started, clock, load = datetime.now(UTC), time.perf_counter(), load_average()
    _say(f"{plan.describe()}; starting broker and database")
    with infrastructure() as infra:
        # First: `zapflow up` creates zapflow.* with the configured partitions, which the webhook
        # scenario's produce would otherwise auto-create differently (see benchmarks.e2e_bench).
        e2e_rows = e2e.rows(e2e.run_e2e(infra, plan.e2e, _say))
        rows = asyncio.run(_kafka(infra, plan))
        rows += asyncio.run(_decider(infra, plan))
        rows += asyncio.run(_postgres(infra, plan))
        rows += asyncio.run(_projector(infra, plan))
        topic = asyncio.run(create_topic(infra, "http-ingest"))
        tenant = asyncio.run(webhook_tenant(infra.database_url))
        _say(f"seeding {plan.conversations:,} conversations for the query API")
        seeded = asyncio.run(query_tenant(infra.database_url, plan.conversations))
        _say("HTTP (uvicorn and load generator subprocesses)")
        loads = run_http(
            infra.bootstrap_servers,
            infra.database_url,
            topic,
            infra.work_dir,
            plan.http_seconds,
            plan.http_rounds,
            tenant.target,
            tenant.secret_key,
            (seeded.ours, seeded.bare),
        )
        rows += _http_rows(loads)
        rows += _query_rows(loads, seeded)
        rows += e2e_rows
        rows += asyncio.run(_replay(infra, plan))
        rows += asyncio.run(_restore(infra, plan))
        # Last: it swaps in a new version, which the scenarios above do not expect.
        rows += asyncio.run(_rebuild(infra, plan))
        services = [
            ("Broker", infra.broker),
            ("PostgreSQL", infra.postgres),
            ("Load average before the run", load),
        ]
    text = render(rows, services, started, time.perf_counter() - clock, plan.describe())
    write(args.out, text)
    print(text)
    _say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
