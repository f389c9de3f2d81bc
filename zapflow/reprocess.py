"""`zapflow reprocess agent|report`: what-if runs of agent settings over past turns (ADR 0017).

`agent` checks everything it is given before it touches anything (the run's name, the dates, the
candidate settings file, like `zapflow agents configure`: the bad field named), then runs
`streams.reprocess.reprocess`. `report` reads a run back, pairs each candidate decision with the
original turn from the log, and renders the comparison per conversation and in total, as a
terminal table and as one self-contained HTML file (inline CSS, no scripts, no external assets,
every text escaped).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import orjson

from events.conversation import ToolCall
from events.tenant import AgentSettings
from streams.reprocess import (
    Candidate,
    NoSuchRun,
    Original,
    RunExists,
    ShadowDecision,
    ShadowRunRecords,
    Topology,
    UnknownTenant,
    WhatIf,
    read_originals,
    read_run,
    reprocess,
)
from streams.topics import shadow_topic
from zapflow.agents import parse_settings
from zapflow.errors import ConfigurationError
from zapflow.runtime import resolve
from zapflow.settings import Settings

type AgentSetup = Callable[[Settings, str], dict[str, Any]]

_YAML_SUFFIXES: Final = (".yaml", ".yml")
_TEXT_WIDTH: Final = 110
_PROGRESS_S: Final = 1.0
NONE: Final = "-"


# -- checking the request ------------------------------------------------------------------------


def run_name(name: str, option: str = "--run") -> str:
    """The run's topic; a `ConfigurationError` naming `option` for a bad name."""
    try:
        return shadow_topic(name)
    except ValueError as exc:
        raise ConfigurationError(option, repr(name), str(exc)) from None


def moment(text: str, option: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            option, repr(text), "not an ISO 8601 date or date-time (e.g. 2026-11-01T09:00:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def candidate_settings(path: str) -> AgentSettings:
    """The candidate settings in `path` (JSON, or YAML for .yaml/.yml), checked as `zapflow
    agents configure` checks them; a `ConfigurationError` naming `--config` and the field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError("--config", path, f"cannot read ({problem})") from None
    if path.lower().endswith(_YAML_SUFFIXES):
        text = _yaml_as_json(text, path)
    try:
        return parse_settings(text, path)
    except ConfigurationError as exc:  # it names --file; here the option is --config
        problem = str(exc).removeprefix(f"{exc.setting}={path}: ")
        raise ConfigurationError("--config", path, problem) from None


def _yaml_as_json(text: str, path: str) -> str:
    try:
        import yaml
    except ImportError:  # a development dependency only
        raise ConfigurationError(
            "--config", path, "YAML needs PyYAML installed; give the settings as JSON"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())  # one line
        raise ConfigurationError("--config", path, f"is not YAML ({problem})") from None
    try:
        return orjson.dumps(document).decode()
    except TypeError as exc:
        raise ConfigurationError("--config", path, f"holds a value JSON cannot ({exc})") from None


def what_if(args: argparse.Namespace) -> tuple[WhatIf, AgentSettings]:
    """Every option checked, before anything is read or written."""
    run_name(args.run)
    since, until = moment(args.since, "--since"), moment(args.until, "--until")
    if since >= until:
        raise ConfigurationError("--since", args.since, f"must be before --until ({args.until})")
    if not 1 <= args.concurrency <= 256:
        raise ConfigurationError("--concurrency", str(args.concurrency), "must be 1 to 256")
    settings = candidate_settings(args.config)
    whatif = WhatIf(args.run, args.tenant, since, until, args.concurrency, args.force)
    return whatif, settings


def agent_command(args: argparse.Namespace, settings: Settings, agent_setup: AgentSetup) -> int:
    """`zapflow reprocess agent`: prints the run's summary (JSON); 1 if refused or a turn failed."""
    from zapflow.setup import check_broker

    whatif, candidate = what_if(args)
    endpoints = resolve(settings)
    asyncio.run(check_broker(endpoints.bootstrap_servers, settings.connect_timeout_s))
    setup = agent_setup(settings, endpoints.database_url)
    topology = Topology(
        endpoints.bootstrap_servers, settings.topic_partitions, settings.topic_replication,
        faq_database_url=setup["reader_url"],
    )  # fmt: skip
    model = Candidate(candidate, setup["llm"], setup["agent_options"].default_model)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or time.monotonic() - last[0] >= _PROGRESS_S:
            last[0] = time.monotonic()
            print(f"reprocess {whatif.run}: {done:,} of {total:,} turns", file=sys.stderr)

    try:
        summary = asyncio.run(reprocess(topology, whatif, model, progress))
    except UnknownTenant:
        raise ConfigurationError("--tenant", str(whatif.tenant_id), "no such tenant") from None
    except RunExists as exc:
        print(f"zapflow: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(summary.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if summary.failed else 0


def report_command(args: argparse.Namespace, settings: Settings) -> int:
    """`zapflow reprocess report NAME [--html FILE]`: the table on stdout, the HTML to FILE."""
    run_name(args.run, "NAME")
    endpoints = resolve(settings)
    try:
        report = asyncio.run(load_report(endpoints.bootstrap_servers, args.run))
    except NoSuchRun as exc:
        raise ConfigurationError("NAME", repr(args.run), str(exc)) from None
    sys.stdout.write(terminal(report))
    if args.html:
        try:
            Path(args.html).write_text(to_html(report), encoding="utf-8")
        except OSError as exc:
            problem = f"cannot write ({exc.strerror})"
            raise ConfigurationError("--html", args.html, problem) from None
        print(f"HTML report written to {args.html}", file=sys.stderr)
    return 0


# -- the comparison -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    """One turn as the original agent or the candidate did it."""

    outcome: str
    """replied, discarded, rejected, failed; `missing` when the log lacks the original."""
    reply: str | None = None
    tools: tuple[str, ...] = ()
    handoff: bool = False
    closed: bool = False
    tokens: int = 0
    cost: Decimal | None = None
    model: str = ""
    detail: str = ""

    @property
    def ending(self) -> str:
        """What the conversation became: hand-off, closed, discarded…, or nothing said."""
        if self.outcome != "replied":
            return self.outcome + (f" ({self.detail})" if self.detail else "")
        if self.handoff:
            return "hand-off" + (f" ({self.detail})" if self.detail else "")
        if self.closed:
            return "closed" + (f" ({self.detail})" if self.detail else "")
        return "reply" if self.reply else "no reply"


@dataclass(frozen=True, slots=True)
class TurnRow:
    conversation_id: str
    received_at: datetime
    customer: str
    original: Side
    candidate: Side

    @property
    def changed(self) -> bool:
        o, c = self.original, self.candidate
        return (o.outcome, o.reply, o.tools, o.handoff, o.closed) != (
            c.outcome, c.reply, c.tools, c.handoff, c.closed)  # fmt: skip


@dataclass(slots=True)
class Pair:
    original: Any = 0
    candidate: Any = 0


@dataclass(slots=True)
class Tally:
    """Per conversation or in total."""

    turns: int = 0
    changed: int = 0
    replies: Pair = field(default_factory=Pair)
    handoffs: Pair = field(default_factory=Pair)
    closes: Pair = field(default_factory=Pair)
    tool_calls: Pair = field(default_factory=Pair)
    tokens: Pair = field(default_factory=Pair)
    cost: Pair = field(default_factory=lambda: Pair(Decimal(0), Decimal(0)))
    unpriced: Pair = field(default_factory=Pair)
    failed: int = 0

    def add(self, row: TurnRow) -> None:
        self.turns += 1
        self.changed += row.changed
        self.failed += row.candidate.outcome == "failed"
        for side, attr in ((row.original, "original"), (row.candidate, "candidate")):
            for pair, value in ((self.replies, bool(side.reply) and side.outcome == "replied"),
                                (self.handoffs, side.handoff), (self.closes, side.closed),
                                (self.tool_calls, len(side.tools)),
                                (self.tokens, side.tokens)):  # fmt: skip
                setattr(pair, attr, getattr(pair, attr) + value)
            if side.cost is not None:
                setattr(self.cost, attr, getattr(self.cost, attr) + side.cost)
            elif side.outcome == "replied" and side.tokens:
                setattr(self.unpriced, attr, getattr(self.unpriced, attr) + 1)

    def handoff_rate(self, attr: str) -> float:
        return getattr(self.handoffs, attr) / self.turns if self.turns else 0.0


@dataclass(slots=True)
class Report:
    records: ShadowRunRecords
    rows: list[TurnRow]

    @property
    def finished(self) -> bool:
        done = self.records.finished
        return done is not None and len(self.records.decisions) == done.turns

    def conversations(self) -> list[tuple[str, Tally]]:
        tallies: dict[str, Tally] = {}
        for row in self.rows:
            tallies.setdefault(row.conversation_id, Tally()).add(row)
        return list(tallies.items())

    def total(self) -> Tally:
        tally = Tally()
        for row in self.rows:
            tally.add(row)
        return tally


def _tools(calls: Iterable[ToolCall]) -> tuple[str, ...]:
    return tuple(call.name if call.accepted else f"{call.name} (refused)" for call in calls)


def _original(found: Original | None) -> Side:
    if found is None:
        return Side("missing", detail="not in the log")
    if found.outcome == "discarded":
        return Side("discarded", detail=found.detail)
    detail = found.handoff or found.closed or ""
    return Side("replied", found.reply, _tools(found.tool_calls), found.handoff is not None,
                found.closed is not None, found.tokens_in + found.tokens_out, found.cost_usd,
                found.model, detail)  # fmt: skip


def _candidate(decision: ShadowDecision) -> Side:
    c, r = decision.candidate, decision.candidate.result
    detail = c.detail or c.handoff or c.closed or ""
    return Side(c.verdict, r.reply if c.verdict == "replied" else None, _tools(r.tool_calls),
                c.handoff is not None, c.closed is not None, r.tokens_in + r.tokens_out,
                c.cost_usd, r.model, detail)  # fmt: skip


def compare(records: ShadowRunRecords, originals: dict[UUID, Original],
            messages: dict[str, str]) -> Report:  # fmt: skip
    ordered = sorted(records.decisions, key=lambda d: (d.original.partition, d.original.offset))
    rows = [
        TurnRow(d.conversation_id, d.trigger_received_at.astimezone(UTC),
                messages.get(d.trigger_message_sid, ""),
                _original(originals.get(d.original.event_id)), _candidate(d))
        for d in ordered
    ]  # fmt: skip
    return Report(records, rows)


async def load_report(brokers: str, run: str) -> Report:
    records = await read_run(brokers, run)
    wanted = {d.original.event_id for d in records.decisions}
    originals = await read_originals(brokers, records.run.tenant_id, wanted)
    return compare(records, originals.turns, originals.messages)


# -- rendering ------------------------------------------------------------------------------------


def _cost(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _arrow(pair: Pair, money: bool = False) -> str:
    if money:
        return f"{_cost(pair.original)} → {_cost(pair.candidate)}"
    return f"{pair.original:,} → {pair.candidate:,}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _one_line(text: str | None, width: int = _TEXT_WIDTH) -> str:
    if not text:
        return NONE
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _headline(report: Report) -> list[str]:
    run = report.records.run
    done = report.records.finished
    state = (
        f"finished {done.finished_at:%Y-%m-%d %H:%M:%S}Z" if report.finished and done
        else f"NOT FINISHED: {len(report.records.decisions)} of {run.turns} turns written"
    )  # fmt: skip
    conversations = len({row.conversation_id for row in report.rows})
    return [
        f"What-if run {run.run!r} (tenant {run.tenant_id})",
        f"  turns whose message came in [{run.since.isoformat()}, {run.until.isoformat()}): "
        f"{run.turns} in {conversations} conversations",
        f"  candidate: {run.agent} {run.model}, settings sha256 {run.settings_sha256[:12]}; "
        f"started {run.started_at:%Y-%m-%d %H:%M:%S}Z, {state}",
    ]


_COLUMNS: Final = ("conversation", "turns", "changed", "replies", "hand-offs", "closes",
                   "tool calls", "tokens", "cost USD")  # fmt: skip


def _table_row(name: str, tally: Tally) -> tuple[str, ...]:
    return (name, str(tally.turns), str(tally.changed), _arrow(tally.replies),
            _arrow(tally.handoffs), _arrow(tally.closes), _arrow(tally.tool_calls),
            _arrow(tally.tokens), _arrow(tally.cost, money=True))  # fmt: skip


def terminal(report: Report) -> str:
    """The comparison as plain text: a table per conversation and in total, then every turn."""
    total = report.total()
    rows = [_table_row(cid, tally) for cid, tally in report.conversations()]
    rows.append(_table_row("total", total))
    widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))  # fmt: skip
        return "  ".join(padded).rstrip()

    out = [*_headline(report), "", "original → candidate", line(_COLUMNS)]
    out += [line(r) for r in rows[:-1]]
    out += ["-" * len(line(_COLUMNS)), line(rows[-1])]
    out.append(
        f"hand-off rate {_pct(total.handoff_rate('original'))} → "
        f"{_pct(total.handoff_rate('candidate'))}; {total.changed} of {total.turns} turns "
        f"changed; {total.failed} candidate turns failed"
    )
    if total.unpriced.original or total.unpriced.candidate:
        out.append(f"turns with no price for their model (not in the cost): "
                   f"{_arrow(total.unpriced)}")  # fmt: skip
    out += ["", "turns (original vs candidate):"]
    for row in report.rows:
        mark = "CHANGED" if row.changed else "same"
        out.append(f"[{row.conversation_id}] {row.received_at:%Y-%m-%d %H:%M:%S}Z  {mark}  "
                   f"customer: {_one_line(row.customer, 80)}")  # fmt: skip
        for label, side in (("original ", row.original), ("candidate", row.candidate)):
            out.append(
                f"    {label}: {_did(side)}; tools {', '.join(side.tools) or NONE}; "
                f"{side.tokens:,} tokens; {_cost(side.cost)} USD"
            )
    # Replies and messages are other people's text: no control character reaches the terminal.
    return "".join(ch if ch.isprintable() or ch == "\n" else "\ufffd"
                   for ch in "\n".join(out) + "\n")  # fmt: skip


def _did(side: Side) -> str:
    """What one side did, in a line: the reply (quoted) and what became of the conversation."""
    if side.outcome != "replied":
        return side.ending
    said = f'reply "{_one_line(side.reply)}"' if side.reply else "no reply"
    return said if side.ending in ("reply", "no reply") else f"{said}, {side.ending}"


_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d2329}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}h3{font-size:1rem;font-family:monospace}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f5f7}td.n{text-align:right;white-space:nowrap}
tr.changed td{background:#fff8e1}tr.total td{font-weight:600}.meta{color:#57606a}
.warn{color:#9a3412;font-weight:600}.reply{white-space:pre-wrap;max-width:32rem}
.tag{display:inline-block;border-radius:3px;padding:0 .3rem;background:#eef1f4;margin:.1rem 0}
.handoff{background:#fde2e1}.closed{background:#e0ecff}pre{white-space:pre-wrap}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _side_html(side: Side) -> str:
    kind = "handoff" if side.handoff else "closed" if side.closed else ""
    tools = "".join(f'<span class="tag">{_e(tool)}</span> ' for tool in side.tools)
    return (
        f'<span class="tag {kind}">{_e(side.ending)}</span>'
        f'<div class="reply">{_e(side.reply or NONE)}</div>'
        f"<div>{tools or 'no tools'}</div>"
        f'<div class="meta">{side.tokens:,} tokens · {_e(_cost(side.cost))} USD'
        f"{' · ' + _e(side.model) if side.model else ''}</div>"
    )


def _tally_cells(tally: Tally) -> str:
    cells = _table_row("", tally)[1:]
    return "".join(f'<td class="n">{_e(cell)}</td>' for cell in cells)


def to_html(report: Report) -> str:
    """The comparison as one self-contained HTML page: inline CSS, no script, no external
    resource, every value escaped."""
    run, total = report.records.run, report.total()
    head = "".join(f"<p class='meta'>{_e(line.strip())}</p>" for line in _headline(report)[1:])
    warn = "" if report.finished else "<p class='warn'>This run did not finish.</p>"
    header = "".join(f"<th>{_e(c)}</th>" for c in _COLUMNS)
    per_conversation = "".join(
        f"<tr><td><a href='#c-{_e(cid)}'>{_e(cid)}</a></td>{_tally_cells(tally)}</tr>"
        for cid, tally in report.conversations()
    )
    summary = (
        f"<table><tr>{header}</tr>{per_conversation}"
        f"<tr class='total'><td>total</td>{_tally_cells(total)}</tr></table>"
        f"<p>Hand-off rate {_pct(total.handoff_rate('original'))} → "
        f"{_pct(total.handoff_rate('candidate'))}; {total.changed} of {total.turns} turns "
        f"changed; {total.failed} candidate turns failed. Each cell: original → candidate.</p>"
    )
    sections = []
    for cid, _ in report.conversations():
        rows = "".join(
            f"<tr class='{'changed' if row.changed else 'same'}'>"
            f"<td class='n'>{row.received_at:%Y-%m-%d %H:%M:%S}Z</td>"
            f"<td class='reply'>{_e(row.customer or NONE)}</td>"
            f"<td>{_side_html(row.original)}</td><td>{_side_html(row.candidate)}</td></tr>"
            for row in report.rows if row.conversation_id == cid
        )  # fmt: skip
        sections.append(
            f"<h3 id='c-{_e(cid)}'>{_e(cid)}</h3><table><tr><th>received</th><th>customer</th>"
            f"<th>original</th><th>candidate</th></tr>{rows}</table>"
        )
    settings = orjson.dumps(run.settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>What-if run {_e(run.run)}</title><style>{_CSS}</style></head><body>"
        f"<h1>What-if run <code>{_e(run.run)}</code> — tenant {_e(run.tenant_id)}</h1>"
        f"{head}{warn}<h2>Per conversation and in total</h2>{summary}"
        f"<h2>Turns</h2>{''.join(sections)}"
        f"<h2>Candidate settings</h2><details><summary>settings sha256 "
        f"{_e(run.settings_sha256)}</summary><pre>{_e(settings.decode())}</pre></details>"
        "</body></html>\n"
    )
