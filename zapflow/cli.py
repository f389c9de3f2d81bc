"""The `zapflow` command line: one entry point for every process and operator task."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from zapflow import replay as audit_replay
from zapflow.errors import ConfigurationError
from zapflow.settings import Settings

if TYPE_CHECKING:
    from events.registry import Message
    from projections.status import PartitionStatus
    from projections.tenants import TenantRecord
    from streams.llm import Model
    from zapflow.runtime import Endpoints

type Handler = Callable[[argparse.Namespace, Settings], int]

STDIN = "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zapflow", description="WhatsApp Business automation on an event log."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="run the whole platform locally (broker, PostgreSQL, all processes)")
    sub.add_parser("api", help="run the HTTP API (uvicorn)")
    worker = sub.add_parser("worker", help="run one worker process")
    worker.add_argument(
        "name", choices=["decider", "agent", "sender", "registrations", "projector"]
    )
    sub.add_parser("setup", help="apply migrations and ensure topics (idempotent)")
    sub.add_parser("migrate", help="apply SQL migrations from schemas/sql (idempotent)")
    topics = sub.add_parser("topics", help="manage the topics zapflow owns")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    topics_sub.add_parser("ensure", help="create missing topics, restore drifted configs")
    log_parser = sub.add_parser("log", help="the event log")
    log_sub = log_parser.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    log_sub.add_parser("restore", help="write the event archive into an empty zapflow.events")
    audit_replay.add_parsers(sub)  # replay, verify (issue #7)
    projections = sub.add_parser("projections", help="the read models the projector maintains")
    projections_sub = projections.add_subparsers(
        dest="projections_command", required=True, metavar="ACTION"
    )
    projections_sub.add_parser(
        "status", help="lag and state per projection and partition; exit 1 if any is stopped"
    )
    projections_sub.add_parser("versions", help="every version of each versioned projection")
    rebuild = projections_sub.add_parser(
        "rebuild",
        help="fill a new version of NAME from offset 0 while the active one serves, then swap",
    )
    rebuild.add_argument("name", metavar="NAME", help="the projection (conversations)")
    rebuild.add_argument(
        "--tenant", type=_uuid, metavar="TENANT_ID",
        help="replace only this tenant's rows of the active version, re-projected from the log "
        "while the projector runs (conversations, agent_settings)",
    )  # fmt: skip
    drop_old = projections_sub.add_parser(
        "drop-old", help="drop the tables of retired versions (of NAME, or of every projection)"
    )
    drop_old.add_argument("name", metavar="NAME", nargs="?", help="the projection")
    agents_parser = sub.add_parser("agents", help="a tenant's agent settings")
    agents_sub = agents_parser.add_subparsers(
        dest="agents_command", required=True, metavar="ACTION"
    )
    configure = agents_sub.add_parser(
        "configure", help="replace a tenant's agent settings from a JSON file (- for stdin)"
    )
    configure.add_argument("--tenant", required=True, type=_uuid, metavar="TENANT_ID")
    configure.add_argument("--file", required=True, metavar="FILE")
    show = agents_sub.add_parser("show", help="a tenant's agent settings as stored")
    show.add_argument("--tenant", required=True, type=_uuid, metavar="TENANT_ID")
    chat = sub.add_parser(
        "chat", help="talk to a tenant's agent as a WhatsApp contact (signed webhooks, stdin)"
    )
    chat.add_argument("--tenant", required=True, type=_uuid, metavar="TENANT_ID")
    chat.add_argument(
        "--from", dest="contact", default="whatsapp:+5511900000001", metavar="whatsapp:+E164"
    )
    chat.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a reply")
    emulator = sub.add_parser(
        "emulator", help="serve the Twilio Messages API emulator (any account SID, open accounts)"
    )
    emulator.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    emulator.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    schemas = sub.add_parser("schemas", help="JSON Schemas of events and commands")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    export = schemas_sub.add_parser("export", help="write schemas/json from the code")
    export.add_argument("--check", action="store_true", help="only report drift; exit 1 if any")
    tenants = sub.add_parser("tenants", help="manage tenants")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    create = tenants_sub.add_parser("create", help="register a tenant; prints its id and API key")
    create.add_argument("--name", required=True)
    create.add_argument("--twilio-account-sid", required=True, metavar="AC…")
    create.add_argument(
        "--twilio-auth-token", required=True, metavar="TOKEN", help="'-' reads it from stdin"
    )
    create.add_argument(
        "--sender", action="append", required=True, help="whatsapp:+E164 (repeat for more)"
    )
    _tenant_lifecycle_parsers(tenants_sub)
    admin = sub.add_parser("admin", help="the platform admin")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    admin_sub.add_parser("token", help="print the platform admin token (/v1/admin/...)")
    _reprocess_parser(sub)
    return parser


def _tenant_lifecycle_parsers(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Changes go through the log and wait until the directory shows them (or are refused)."""
    actions.add_parser("list", help="every tenant (never a token or key)")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("tenant", type=_uuid, metavar="TENANT_ID")
        return parser

    action("show", "one tenant (never its token or key)")
    action("update", "rename a tenant").add_argument("--name", required=True)
    action("add-sender", "add a WhatsApp sender").add_argument(
        "--sender", required=True, metavar="whatsapp:+E164"
    )
    action("remove-sender", "remove a WhatsApp sender (never the last)").add_argument(
        "--sender", required=True, metavar="whatsapp:+E164"
    )
    rotate = action("rotate-credentials", "replace the Twilio account SID and auth token")
    rotate.add_argument("--twilio-account-sid", required=True, metavar="AC…")
    rotate.add_argument(
        "--twilio-auth-token-stdin", action="store_true",
        help="read the token from stdin (else it is asked for, not echoed)",
    )  # fmt: skip
    action("suspend", "no message in or out until reactivated").add_argument(
        "--reason", required=True
    )
    action("reactivate", "lift a suspension")


def _reprocess_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reprocess = sub.add_parser(
        "reprocess", help="what-if: candidate agent settings over past turns, into a shadow topic"
    )
    actions = reprocess.add_subparsers(dest="reprocess_command", required=True, metavar="ACTION")
    agent = actions.add_parser(
        "agent", help="run the candidate over the turns in [--since, --until) into "
        "zapflow.shadow.NAME (nothing is sent, no command or event is written)",
    )  # fmt: skip
    agent.add_argument("--tenant", required=True, type=_uuid, metavar="TENANT_ID")
    agent.add_argument("--since", required=True, metavar="ISO", help="from, inclusive (UTC)")
    agent.add_argument("--until", required=True, metavar="ISO", help="to, exclusive (UTC)")
    agent.add_argument("--config", required=True, metavar="FILE", help="agent settings (JSON/YAML)")
    agent.add_argument("--run", required=True, metavar="NAME", help="a-z 0-9 - _, 63 at most")
    agent.add_argument("--concurrency", type=int, default=8, help="turns at once (default 8)")
    agent.add_argument("--force", action="store_true", help="replace an existing run NAME")
    report = actions.add_parser("report", help="compare run NAME with the original turns")
    report.add_argument("run", metavar="NAME")
    report.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.supervisor import up

    return up(settings)


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app
    from api.container import ApiConfig
    from zapflow.runtime import resolve
    from zapflow.secret_key import resolve_admin_token, resolve_secret_key, resolve_token_keys

    endpoints = resolve(settings)
    secret_key = resolve_secret_key(settings)
    config = ApiConfig(
        database_url=endpoints.database_url,
        bootstrap_servers=endpoints.bootstrap_servers,
        public_url=settings.effective_public_url,
        trust_proxy=settings.trust_proxy,
        secret_key=secret_key,
        max_body_bytes=settings.webhook_max_body_bytes,
        produce_timeout_s=settings.produce_timeout_s,
        app_database_url=settings.app_database_url,
        token_keys=resolve_token_keys(settings, secret_key),
        admin_token=resolve_admin_token(settings, secret_key),
        auth_cache_ttl_s=settings.auth_cache_ttl_s,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=settings.http_host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            proxy_headers=settings.trust_proxy,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        )
    )
    server.run()
    return 0 if server.started else 1


def _llm(settings: Settings) -> Model | None:
    """The OpenAI adapter when the platform has a key (any compatible server via the URL)."""
    if settings.openai_api_key is None:
        return None
    import openai

    from streams.llm import OpenAIChat

    client = openai.AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(), base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_s, max_retries=settings.llm_max_retries,
    )  # fmt: skip
    return OpenAIChat(client)


def _agent_setup(settings: Settings, database_url: str) -> dict[str, Any]:
    """The agent worker's model, FAQ connection and options (only it imports the model SDK)."""
    from projections.database import APP_ROLE, with_user
    from streams.agent import AgentOptions

    return {
        "llm": _llm(settings),
        "reader_url": settings.app_database_url or with_user(database_url, APP_ROLE),
        "agent_options": AgentOptions(
            debounce_s=settings.agent_debounce_s,
            max_in_flight=settings.agent_max_in_flight,
            default_model=settings.openai_model,
        ),
    }


def _sender_setup(settings: Settings) -> dict[str, Any]:
    """The sender's Twilio endpoint, limits and the key that opens the tenants' tokens."""
    from streams.sender import SenderOptions
    from zapflow.secret_key import resolve_secret_key

    return {
        "secret_key": resolve_secret_key(settings),
        "sender_options": SenderOptions(
            public_url=settings.effective_public_url,
            twilio_api_url=settings.twilio_api_url,
            timeout_s=settings.twilio_timeout_s,
            settle_s=settings.twilio_settle_s,
            rate_per_sender=settings.send_rate_per_sender,
            rate_per_recipient=settings.send_rate_per_recipient,
            max_in_flight=settings.send_max_in_flight,
        ),
    }


def _registrations_setup(settings: Settings) -> dict[str, Any]:
    from streams.registrations import RegistrationOptions

    return {"registration_options": RegistrationOptions(
        step_timeout_s=settings.registration_step_timeout_s,
        max_reissues=settings.registration_max_reissues,
    )}  # fmt: skip


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import WorkerStartError, run_worker
    from zapflow.runtime import resolve

    endpoints = resolve(settings)
    extra = _agent_setup(settings, endpoints.database_url) if args.name == "agent" else {}
    if args.name == "sender":
        extra = _sender_setup(settings)
    if args.name == "registrations":
        extra = _registrations_setup(settings)
    try:
        asyncio.run(
            run_worker(
                args.name,
                endpoints.bootstrap_servers,
                settings.connect_timeout_s,
                instance_id=f"{settings.instance_id}-{args.name}" if settings.instance_id else None,
                session_timeout_ms=settings.group_session_timeout_ms,
                database_url=endpoints.database_url,
                **extra,
            )
        )
    except WorkerStartError as exc:
        raise ConfigurationError(
            "KAFKA_BOOTSTRAP_SERVERS", endpoints.bootstrap_servers, str(exc)
        ) from None
    return 0


def _setup(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.runtime import resolve
    from zapflow.setup import setup

    applied, report = asyncio.run(setup(resolve(settings), settings))
    _print({"migrations_applied": applied, "topics_created": report.created,
            "topics_existing": report.existing,
            "configs_restored": report.configs_updated})  # fmt: skip
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.runtime import resolve
    from zapflow.setup import apply_migrations

    database_url = settings.database_url or resolve(settings).database_url
    applied = asyncio.run(apply_migrations(database_url, settings.connect_timeout_s))
    _print({"migrations_applied": applied})
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.runtime import resolve
    from zapflow.setup import ensure

    brokers = settings.kafka_bootstrap_servers or resolve(settings).bootstrap_servers
    report = asyncio.run(ensure(brokers, settings))
    _print({"created": report.created, "existing": report.existing,
            "configs_restored": report.configs_updated})  # fmt: skip
    return 0


def _schemas(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow import schemas

    if args.check:
        problems = schemas.drift()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    _print({"written": schemas.export()})
    return 0


def _tenants(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.runtime import resolve
    from zapflow.secret_key import resolve_secret_key
    from zapflow.tenants import TenantNotProjected, create_tenant, validated

    if args.tenants_command != "create":
        return _tenant_lifecycle(args, settings)

    secret = args.twilio_auth_token
    if secret == STDIN:  # keeps the token out of the process list and shell history
        secret = sys.stdin.readline().strip()
    tenant = validated(args.name, args.twilio_account_sid, secret, args.sender)
    key = resolve_secret_key(settings)
    endpoints = resolve(settings)
    try:
        tenant_id, api_key = asyncio.run(
            create_tenant(tenant, endpoints, key, timeout_s=settings.connect_timeout_s)
        )
    except TenantNotProjected as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 1
    _print({"tenant_id": str(tenant_id), "api_key": api_key})
    return 0


def _tenant_lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow import tenant_lifecycle as lifecycle
    from zapflow.runtime import resolve

    command, timeout_s = args.tenants_command, settings.connect_timeout_s
    if command in ("list", "show"):
        endpoints = resolve(settings)
        if command == "list":
            _print(asyncio.run(lifecycle.list_tenants(endpoints, timeout_s)))
        else:
            _print(asyncio.run(lifecycle.show_tenant(args.tenant, endpoints, timeout_s)))
        return 0
    build = _lifecycle_command(args, settings)  # bad input: an error before anything is sent
    try:
        _print(asyncio.run(lifecycle.change(args.tenant, build, resolve(settings), timeout_s)))
    except lifecycle.ChangeNotMade as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _lifecycle_command(
    args: argparse.Namespace, settings: Settings
) -> Callable[[TenantRecord], Message]:
    """The command to send, checked now; the token is sealed for the tenant once it is known."""
    from commands import tenant as inputs
    from commands import tenant_lifecycle as lc
    from zapflow.tenants import as_options

    command = args.tenants_command
    with as_options():
        if command == "update":
            name = inputs.tenant_name(args.name)
            return lambda _: lc.UpdateTenantSettings(name=name)
        if command in ("add-sender", "remove-sender"):
            sender = inputs.sender(args.sender)
            if command == "add-sender":
                return lambda _: lc.AddWhatsAppSender(sender=sender)
            return lambda _: lc.RemoveWhatsAppSender(sender=sender)
        if command == "suspend":
            reason = inputs.reason(args.reason)
            return lambda _: lc.SuspendTenant(reason=reason)
        if command == "reactivate":
            return lambda _: lc.ReactivateTenant()
        sid = inputs.account_sid(args.twilio_account_sid)
        token = inputs.auth_token(_auth_token(args.twilio_auth_token_stdin))
    from projections.credentials import encrypt_secret
    from zapflow.secret_key import resolve_secret_key

    key = resolve_secret_key(settings)
    return lambda t: lc.RotateTwilioCredentials(
        twilio_account_sid=sid, twilio_auth_token_encrypted=encrypt_secret(key, token, t.tenant_id)
    )


def _auth_token(from_stdin: bool) -> str:
    """The token from stdin or a prompt that does not echo: never from argv (process list)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    return getpass.getpass("Twilio auth token: ")


def _admin(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.secret_key import resolve_admin_token, resolve_secret_key

    # A configured token needs no secret key (it is only derived from one when unset).
    secret = b"" if settings.admin_token is not None else resolve_secret_key(settings)
    print(resolve_admin_token(settings, secret))
    return 0


def _log(args: argparse.Namespace, settings: Settings) -> int:
    from streams.restore import RestoreRefused, restore
    from zapflow.runtime import resolve

    endpoints = resolve(settings)
    try:
        report = asyncio.run(restore(endpoints.bootstrap_servers, endpoints.database_url))
    except RestoreRefused as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 1
    _print({"restored": report.total, "partitions": report.restored})
    return 0


def _projections(args: argparse.Namespace, settings: Settings) -> int:
    from projections.tenant_rebuild import UnknownTenant
    from projections.versions import RebuildRefused, UnknownProjection
    from zapflow.runtime import resolve

    endpoints = resolve(settings)
    if args.projections_command == "status":
        rows = asyncio.run(_projection_status(endpoints, settings.connect_timeout_s))
        _print(rows)
        return 1 if any(row.state == "stopped" for row in rows) else 0
    try:
        _print(asyncio.run(_projection_versions(args, endpoints, settings.connect_timeout_s)))
    except (UnknownProjection, UnknownTenant, RebuildRefused) as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UnknownProjection | UnknownTenant) else 1
    return 0


async def _projection_versions(
    args: argparse.Namespace, endpoints: Endpoints, timeout_s: float
) -> object:
    """`versions`, `rebuild NAME` or `drop-old [NAME]`."""
    from projections import versions
    from projections.database import connect
    from streams.topics import EVENTS
    from zapflow.setup import check_broker, check_database

    database_url = endpoints.database_url
    await check_database(database_url, timeout_s)
    if args.projections_command == "rebuild":
        await check_broker(endpoints.bootstrap_servers, timeout_s)

        def progress(done: int, total: int) -> None:
            print(f"rebuild {args.name}: {done:,} of {total:,} records", file=sys.stderr)

        if args.tenant is not None:
            from projections import tenant_rebuild

            return tenant_rebuild.describe(
                await tenant_rebuild.rebuild_tenant(
                    endpoints.bootstrap_servers, database_url, args.name, args.tenant, EVENTS,
                    progress,
                )
            )  # fmt: skip
        rebuilt = await versions.rebuild(
            endpoints.bootstrap_servers, database_url, args.name, EVENTS, progress
        )
        return {
            "projection": rebuilt.projection, "version": rebuilt.version,
            "schema": rebuilt.schema, "replaced": rebuilt.replaced,
            "seconds": round(rebuilt.seconds, 3),
            "next_offsets": {str(p): o for p, o in sorted(rebuilt.positions.items())},
        }  # fmt: skip
    conn = await connect(database_url, timeout_s)
    try:
        if args.projections_command == "drop-old":
            return {"dropped": versions.describe(await versions.drop_old(conn, args.name))}
        return versions.describe(await versions.versions(conn))
    finally:
        await conn.close()


async def _projection_status(endpoints: Endpoints, timeout_s: float) -> list[PartitionStatus]:
    """Every projection's status on every partition of the event log, now."""
    from projections import status, versions
    from projections.batch import checkpoint_names
    from projections.database import connect, redact
    from streams import kafka
    from streams.topics import EVENTS
    from zapflow.setup import check_broker, check_database

    brokers, database_url = endpoints.bootstrap_servers, endpoints.database_url
    await check_database(database_url, timeout_s)
    await check_broker(brokers, timeout_s)
    conn = await connect(database_url, timeout_s)
    consumer = kafka.groupless_consumer(brokers)
    try:
        if not await conn.fetchval("SELECT to_regclass('projection_status') IS NOT NULL"):
            problem = "has no projection_status table; run `zapflow setup`"
            raise ConfigurationError("DATABASE_URL", redact(database_url), problem)
        await consumer.start()
        partitions = await status.topic_partitions(consumer, EVENTS)
        if not partitions:
            problem = f"has no topic {EVENTS}; run `zapflow setup`"
            raise ConfigurationError("KAFKA_BOOTSTRAP_SERVERS", brokers, problem)
        projections = (*await versions.live(conn), *await versions.building(conn))
        names = checkpoint_names(projections)
        try:
            return await status.report(conn, consumer, EVENTS, partitions, names, timeout_s)
        except TimeoutError as exc:
            raise ConfigurationError("KAFKA_BOOTSTRAP_SERVERS", brokers, str(exc)) from None
    finally:
        await consumer.stop()
        await conn.close()


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a tenant id: {text!r}") from None


def _agents(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from zapflow.agents import AgentNotConfigured, configure, parse_settings, show
    from zapflow.runtime import resolve

    endpoints, timeout_s = resolve(settings), settings.connect_timeout_s
    if args.agents_command == "show":
        _print(asyncio.run(show(args.tenant, endpoints, timeout_s)))
        return 0
    try:
        text = sys.stdin.read() if args.file == STDIN else Path(args.file).read_text()
    except OSError as exc:
        raise ConfigurationError("--file", args.file, f"cannot read ({exc.strerror})") from None
    agent = parse_settings(text, args.file)
    try:
        _print(asyncio.run(configure(args.tenant, agent, endpoints, timeout_s)))
    except AgentNotConfigured as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _chat(args: argparse.Namespace, settings: Settings) -> int:
    from commands.tenant import SENDER
    from zapflow.chat import ChatTarget, chat
    from zapflow.runtime import read_live, resolve
    from zapflow.secret_key import resolve_secret_key

    if not SENDER.match(args.contact):
        raise ConfigurationError("--from", args.contact, "must be whatsapp:+E164")
    live = read_live(settings.runtime_file)
    api_url = live.api_url if live else f"http://{settings.http_host}:{settings.http_port}"
    public_url = settings.public_url or (live.public_url if live and live.public_url else None)
    target = ChatTarget(
        api_url.rstrip("/"),
        public_url or settings.effective_public_url,
        live.emulator_url if live else "",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per message is noise here
    if sys.stdin.isatty():
        print(f"talking to tenant {args.tenant} as {args.contact}; Ctrl-D ends", file=sys.stderr)

    def say(text: str) -> None:
        print(text, flush=True)

    key, endpoints = resolve_secret_key(settings), resolve(settings)
    sent = asyncio.run(
        chat(endpoints, target, key, args.tenant, args.contact, sys.stdin, say, args.wait)
    )
    print(f"({sent} messages sent)", file=sys.stderr)
    return 0


def _emulator(args: argparse.Namespace, settings: Settings) -> int:
    from emulator import create_app, run

    def ready(url: str) -> None:
        print(f"Twilio API emulator at {url} (open accounts); Ctrl-C stops it", flush=True)

    try:
        run(create_app({}, open_accounts=True), args.host, args.port, ready)
    except OSError as exc:
        raise ConfigurationError("--port", str(args.port), f"cannot listen ({exc})") from None
    return 0


def _reprocess(args: argparse.Namespace, settings: Settings) -> int:
    from zapflow.reprocess import agent_command, report_command

    if args.reprocess_command == "report":
        return report_command(args, settings)
    return agent_command(args, settings, _agent_setup)


def _print(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


HANDLERS: dict[str, Handler] = {
    "up": _up,
    "api": _api,
    "worker": _worker,
    "setup": _setup,
    "migrate": _migrate,
    "topics": _topics,
    "schemas": _schemas,
    "log": _log,
    "replay": audit_replay.replay_command,
    "verify": audit_replay.verify_command,
    "projections": _projections,
    "tenants": _tenants,
    "admin": _admin,
    "agents": _agents,
    "chat": _chat,
    "emulator": _emulator,
    "reprocess": _reprocess,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "ZAPFLOW_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"zapflow: error: {name}: {error['msg']}", file=sys.stderr)
        return 2
    from zapflow.logs import configure

    configure(settings.log_level, args.command if args.command != "worker" else args.name)
    try:
        return HANDLERS[args.command](args, settings)
    except ConfigurationError as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
