"""`zapflow replay` and `zapflow verify`: audit exports, time travel, offline checks.

Standard output carries the data (NDJSON events, or one JSON document); everything said about
it (progress, findings, the summary) goes to standard error, the progress bar only when that is
a terminal. Exit 0: the chain verified (duplicates are reported but benign); 1: tampering, a
fork, a gap or a broken link (or a failed `verify`); 2: a bad argument or an unreachable source.
The procedure for auditors is docs/audit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING
from uuid import UUID

import orjson

from zapflow.errors import ConfigurationError
from zapflow.runtime import read_live
from zapflow.settings import Settings

if TYPE_CHECKING:
    from streams.replay import Replay, Selection, Source
    from streams.time_travel import AsOf

SHOWN_DUPLICATES = 20
EVENTS_TOPIC = "zapflow.events"  # streams.topics.EVENTS, without importing aiokafka to parse args


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `replay` and `verify` subcommands (`sub`: the CLI's subparsers)."""
    replay = sub.add_parser(
        "replay",
        help="stream a tenant's events as NDJSON, verifying its hash chain (or, with --as-of, "
        "print a conversation as it stood then)",
    )
    replay.add_argument("--tenant", required=True, type=_uuid, metavar="TENANT_ID")
    replay.add_argument("--conversation", metavar="C", help="conversation id or whatsapp:+E164")
    replay.add_argument("--since", metavar="ISO", help="from the first event recorded then")
    replay.add_argument("--until", metavar="ISO", help="up to the first event recorded then")
    replay.add_argument("--types", metavar="A,B", help="only these event types")
    replay.add_argument("--out", metavar="FILE", help="write FILE and FILE.manifest.json")
    replay.add_argument("--source", choices=["log", "archive"], default="log")
    replay.add_argument("--as-of", metavar="SEQ|ISO", help="time travel (needs --conversation)")
    replay.add_argument("--topic", default=EVENTS_TOPIC, help=argparse.SUPPRESS)
    verify = sub.add_parser("verify", help="re-check an export offline (hashes, links, manifest)")
    verify.add_argument("file", metavar="FILE")


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a tenant id: {text!r}") from None


def _selection(args: argparse.Namespace) -> Selection:
    from streams.replay import Selection, parse_instant

    def instant(flag: str, text: str | None) -> datetime | None:
        try:
            return parse_instant(text) if text is not None else None
        except ValueError as exc:
            raise ConfigurationError(flag, text or "", str(exc)) from None

    types = None
    if args.types is not None:
        types = frozenset(name.strip() for name in args.types.split(",") if name.strip())
    try:
        return Selection(args.tenant, args.conversation, instant("--since", args.since),
                         instant("--until", args.until), types)  # fmt: skip
    except ValueError as exc:
        raise ConfigurationError("--types", args.types or "", str(exc)) from None


def _endpoint(settings: Settings, name: str) -> str:
    """The broker (`KAFKA_BOOTSTRAP_SERVERS`) or database (`DATABASE_URL`): the setting, else
    the running `zapflow up`'s. Unlike `runtime.resolve`, the other one need not be known: a
    replay of the log needs no database."""
    live = read_live(settings.runtime_file)
    if name == "DATABASE_URL":
        found = settings.database_url or (live.database_url if live else None)
    else:
        found = settings.kafka_bootstrap_servers or (live.bootstrap_servers if live else None)
    if found is None:
        raise ConfigurationError(name, "(unset)", "not configured and no running `zapflow up`")
    return found


class Progress:
    """A one-line bar on a terminal: records read of the source, the tenant's events, the rate."""

    def __init__(self, stream: IO[str], source: Source) -> None:
        self.stream, self.source = stream, source
        self.enabled = stream.isatty()
        self.started = self.shown = time.monotonic()

    def __call__(self, replay: Replay, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown < 0.1):
            return
        self.shown = now
        scanned, total = self.source.scanned, self.source.total or 0
        share = scanned / total if total else 1.0
        bar = "#" * int(share * 24)
        rate = scanned / max(now - self.started, 1e-9)
        self.stream.write(
            f"\rreplay [{bar:<24}] {scanned:,}/{total:,} records · {replay.events_seen:,} of "
            f"the tenant · {replay.count:,} written · {rate:,.0f} records/s"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()


def _say(text: str) -> None:
    print(f"zapflow: {text}", file=sys.stderr)


def _report(replay: Replay) -> None:
    chain = replay.chain
    for finding in chain.duplicates[:SHOWN_DUPLICATES]:
        _say(f"replay: {finding} (benign: at-least-once append)")
    if len(chain.duplicates) > SHOWN_DUPLICATES:
        _say(f"replay: … and {len(chain.duplicates) - SHOWN_DUPLICATES} more duplicates")
    for issue in chain.issues:
        _say(f"replay: {issue}")
    head = f"seq {chain.head_seq}" if chain.head_seq else "no event"
    verdict = "verified" if chain.ok else f"NOT verified: {len(chain.issues)} issue(s)"
    _say(f"replay: {replay.count:,} event(s) written of {replay.events_seen:,} record(s) of the "
         f"tenant; chain {verdict} up to {head}; {len(chain.duplicates)} duplicate(s)")  # fmt: skip


async def _drive(
    source: Source, selection: Selection, take: Callable[[list[bytes]], Awaitable[None]]
) -> Replay:
    from streams.replay import Replay

    replay = Replay(selection, source)
    progress = Progress(sys.stderr, source)
    try:
        async for emitted in replay.emitted():
            await take(emitted)
            progress(replay)
    finally:
        progress(replay, final=True)
    return replay


async def _with_source(
    args: argparse.Namespace, settings: Settings, selection: Selection,
    take: Callable[[list[bytes]], Awaitable[None]],
) -> Replay:  # fmt: skip
    from projections.database import connect
    from streams.replay import ArchiveSource, LogSource, SourceError
    from zapflow.setup import check_broker, check_database

    timeout_s = settings.connect_timeout_s
    try:
        if args.source == "archive":
            database_url = _endpoint(settings, "DATABASE_URL")
            await check_database(database_url, timeout_s)
            conn = await connect(database_url, timeout_s)
            try:
                archive = ArchiveSource(conn, args.topic, selection.tenant_id)
                await archive.count()
                return await _drive(archive, selection, take)
            finally:
                await conn.close()
        brokers = _endpoint(settings, "KAFKA_BOOTSTRAP_SERVERS")
        await check_broker(brokers, timeout_s)
        async with LogSource(brokers, args.topic, selection.tenant_id,
                             idle_timeout_s=max(timeout_s, 5.0)) as log:  # fmt: skip
            return await _drive(log, selection, take)
    except SourceError as exc:
        raise ConfigurationError("--source", args.source, str(exc)) from None


def replay_command(args: argparse.Namespace, settings: Settings) -> int:
    # Standard error carries the findings; the Kafka client's INFO lines would bury them.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    selection = _selection(args)
    if args.as_of is not None:
        return _time_travel(args, settings, selection)
    from streams.audit_export import ExportFile, manifest, manifest_path

    out_path = Path(args.out) if args.out else None
    out: IO[bytes] = out_path.open("wb") if out_path else sys.stdout.buffer

    async def export() -> tuple[Replay, str]:
        lines = ExportFile(out)
        replay = await _with_source(args, settings, selection, lines.write)
        await lines.flush()
        return replay, lines.sha256

    try:
        replay, sha256 = asyncio.run(export())
    except BrokenPipeError:  # `… | head`: the reader has what it wanted
        return 0
    finally:
        if out_path:
            out.close()
    _report(replay)
    if out_path:
        written = manifest(replay, sha256, datetime.now(UTC))
        manifest_path(out_path).write_bytes(orjson.dumps(written, option=orjson.OPT_INDENT_2))
        _say(f"replay: wrote {out_path} and {manifest_path(out_path)}")
    return 0 if replay.ok else 1


def _time_travel(args: argparse.Namespace, settings: Settings, selection: Selection) -> int:
    from streams.replay import Selection
    from streams.time_travel import ConversationAsOf

    cid = selection.conversation_id
    if cid is None:
        raise ConfigurationError("--as-of", args.as_of, "needs --conversation")
    extra = [flag for flag, value in (("--out", args.out), ("--types", args.types),
             ("--since", args.since), ("--until", args.until)) if value is not None]  # fmt: skip
    if extra:
        raise ConfigurationError("--as-of", args.as_of, f"cannot be combined with {extra[0]}")
    as_of = _as_of(args.as_of)
    folder = ConversationAsOf(cid, as_of)

    async def take(emitted: list[bytes]) -> None:
        for value in emitted:
            folder.fold(orjson.loads(value))

    # Every event of the tenant: the agent settings live in the tenant's own stream.
    replay = asyncio.run(_with_source(args, settings, Selection(selection.tenant_id), take))
    _report(replay)
    result = {"tenant_id": str(selection.tenant_id), **folder.report(),
              "chain": {"verified": replay.ok, "head_seq": replay.chain.head_seq,
                        "issues": [str(issue) for issue in replay.chain.issues]}}  # fmt: skip
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if replay.ok else 1


def _as_of(text: str) -> AsOf:
    from streams.time_travel import AsOf

    try:
        return AsOf.parse(text)
    except ValueError as exc:
        raise ConfigurationError("--as-of", text, str(exc)) from None


def verify_command(args: argparse.Namespace, settings: Settings) -> int:
    from streams.audit_export import verify_export

    path = Path(args.file)
    try:
        found = verify_export(path)
    except OSError as exc:
        raise ConfigurationError("FILE", args.file, f"cannot read ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError("FILE", args.file, f"unreadable manifest ({exc})") from None
    for warning in found.warnings:
        _say(f"verify: warning: {warning}")
    for problem in found.problems:
        _say(f"verify: {problem}")
    sys.stdout.write(orjson.dumps({"file": str(path), **found.summary()},
                                  option=orjson.OPT_INDENT_2).decode() + "\n")  # fmt: skip
    return 0 if found.ok else 1
