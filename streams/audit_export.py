"""Audit exports: NDJSON of record values, their manifest, and checking both offline.

An export is one event per line, each line the record value exactly as it is on the log (the
sealed JSON: keys sorted, compact, UTF-8), so anyone can recompute every hash from the line
alone (docs/audit.md). The manifest says what was asked for and what was found: tenant,
filters, count, first and last event, the head of the tenant's whole chain as verified, every
issue, the export's SHA-256, the source, the tool's version and when.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any, Final

import orjson

from events.chain import GENESIS, ChainHead, carries_its_hash
from streams.replay import (
    TAMPERED,
    UNREADABLE,
    Finding,
    Replay,
    TenantChain,
    line_label,
    sealed_fields,
)

FORMAT: Final = "zapflow-audit-export/1"
MANIFEST_SUFFIX: Final = ".manifest.json"
TRAILER_KEY: Final = "manifest"
"""The API's last line is `{"manifest": {…}}`: the same manifest, after the events."""


def zapflow_version() -> str:
    try:
        return version("zapflow")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class ExportLines:
    """Record values as NDJSON lines, hashing what it hands out (the manifest's `sha256`)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def lines(self, values: Iterable[bytes]) -> bytes:
        """`values` (one line each: `Replay` keeps a tampered value on one line) as NDJSON."""
        listed = list(values)
        if not listed:
            return b""
        data = b"\n".join(listed) + b"\n"
        self._sha.update(data)
        return data

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class ExportFile(ExportLines):
    """`ExportLines` written to a binary file by a worker thread, a batch at a time: hashlib and
    file writes let go of the GIL on large buffers, so the replay checks the next batch meanwhile
    (hashing and writing are a tenth of an export's time). `flush` before reading `sha256`."""

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self._out = out
        self._pending: asyncio.Future[None] | None = None

    async def write(self, values: list[bytes]) -> None:
        if not values:
            return
        data = b"\n".join(values) + b"\n"
        await self.flush()  # one batch in flight: the order of the lines is kept
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, data)

    def _write(self, data: bytes) -> None:
        self._sha.update(data)
        self._out.write(data)

    async def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending
        self._out.flush()


def _head(head: ChainHead | None) -> dict[str, object] | None:
    return None if head is None else {"tenant_seq": head.tenant_seq, "hash": head.hash}


def manifest(replay: Replay, export_sha256: str, created_at: datetime) -> dict[str, Any]:
    chain, selection = replay.chain, replay.selection
    placed = chain.head_seq > chain.base
    return {
        "format": FORMAT,
        "tenant_id": str(selection.tenant_id),
        "filters": selection.as_json(),
        "contiguous": selection.contiguous,
        "count": replay.count,
        "first": _head(replay.first),
        "last": _head(replay.last),
        "chain_head": {"tenant_seq": chain.head_seq, "hash": chain.head_hash} if placed else None,
        "verified": chain.ok,
        "issues": [issue.as_json() for issue in chain.issues],
        "duplicates": len(chain.duplicates),
        "events_seen": replay.events_seen,
        "sha256": export_sha256,
        "source": replay.source.describe(),
        "zapflow_version": zapflow_version(),
        "created_at": created_at.isoformat(),
    }


def manifest_path(export: Path) -> Path:
    return export.with_name(export.name + MANIFEST_SUFFIX)


@dataclass(slots=True)
class Verification:
    """What `verify_export` found: `problems` empty means the export is what it says."""

    count: int = 0
    first: ChainHead | None = None
    last: ChainHead | None = None
    problems: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, object]:
        return {
            "verified": self.ok,
            "count": self.count,
            "first": _head(self.first),
            "last": _head(self.last),
            "problems": [str(problem) for problem in self.problems],
            "warnings": self.warnings,
        }


TAIL_BYTES: Final = 1 << 20
"""How far from its end an export is searched for a trailer manifest (the API's last line)."""


def _trailer(path: Path) -> tuple[dict[str, Any] | None, int]:
    """The manifest on the export's last line, if that line is one, and how many bytes of
    event lines precede it (all of them when there is no trailer). Reads only the tail."""
    size = path.stat().st_size
    with path.open("rb") as file:
        file.seek(max(size - TAIL_BYTES, 0))
        tail = file.read()
    body = tail.removesuffix(b"\n")
    cut = body.rfind(b"\n")
    if cut < 0 and len(tail) < size:
        return None, size  # a last line longer than the tail: not a manifest
    try:
        last = orjson.loads(body[cut + 1 :])
    except orjson.JSONDecodeError:
        return None, size
    if isinstance(last, dict) and set(last) == {TRAILER_KEY}:
        return last[TRAILER_KEY], size - (len(tail) - (cut + 1))
    return None, size


def verify_export(path: Path) -> Verification:
    """Re-check an export offline, reading it line by line: every line's hash recomputed;
    sequence numbers in order; consecutive lines linked when the export is contiguous (no
    conversation or type filter); the manifest's tenant, count, first, last and SHA-256 against
    the lines. A manifest is read from `<FILE>.manifest.json`, else from a trailer line."""
    found = Verification()
    trailer, body_bytes = _trailer(path)
    sidecar = manifest_path(path)
    found.manifest = orjson.loads(sidecar.read_bytes()) if sidecar.exists() else trailer
    if found.manifest is None:
        found.warnings.append("no manifest: hashes and order checked; completeness unknown")
    lines, sha = _Lines(found, found.manifest), hashlib.sha256()
    with path.open("rb") as file:
        read = 0
        for number, raw in enumerate(file, start=1):
            if read >= body_bytes:
                break  # the trailer
            read += len(raw)
            sha.update(raw)
            lines.check(number, raw.removesuffix(b"\n"))
    lines.finish()
    if found.manifest is not None:
        _check_manifest(found, found.manifest, sha.hexdigest())
    return found


class _Lines:
    """The export's lines in order: through a `TenantChain` when the export is contiguous,
    else each hash and the order of the sequence numbers (and links where they are adjacent)."""

    def __init__(self, found: Verification, manifest_: dict[str, Any] | None) -> None:
        self.found = found
        self.tenant = manifest_.get("tenant_id") if manifest_ else None
        self.contiguous = bool(manifest_ and manifest_.get("contiguous"))
        filters = (manifest_.get("filters") or {}) if manifest_ else {}
        self.from_genesis = bool(manifest_) and filters.get("since") is None
        self.chain = (
            TenantChain(GENESIS, line_label) if self.contiguous and self.from_genesis else None
        )
        self.previous: dict[str, Any] | None = None

    def check(self, number: int, line: bytes) -> None:
        found, where = self.found, line_label(0, number)
        fields = sealed_fields(line)
        expected = (self.chain.head_seq + 1) if self.chain is not None else None
        if fields is None:
            found.problems.append(Finding("unreadable", expected, where, UNREADABLE))
            return
        self.tenant = self.tenant or fields["tenant_id"]
        seq, digest = fields["tenant_seq"], fields["hash"]
        if fields["tenant_id"] != self.tenant:
            found.problems.append(
                Finding("foreign", seq, where, f"an event of tenant {fields['tenant_id']}")
            )
            return
        if self.chain is None and self.contiguous:  # a run that starts after seq 1 (--since)
            start = ChainHead(seq - 1, fields["prev_hash"])
            self.chain, expected = TenantChain(start, line_label), seq
        sealed = carries_its_hash(fields, line)
        found.count += 1
        found.first = found.first or ChainHead(seq, digest)
        found.last = ChainHead(seq, digest)
        if self.chain is not None:
            if not sealed:
                named = expected if expected is not None else seq
                claims = f" (its content says seq {seq})" if named != seq else ""
                self.chain.defect("tampered", named, digest, 0, number, TAMPERED + claims)
            elif not self.chain.extend(seq, digest, fields["prev_hash"], 0, number):
                self.chain.issues.append(
                    Finding("duplicate", seq, where, "an export holds each event once")
                )
            return
        previous = self.previous
        if not sealed:
            found.problems.append(Finding("tampered", seq, where, TAMPERED))
        elif previous is not None and seq <= previous["tenant_seq"]:
            found.problems.append(
                Finding("reordered", seq, where, f"follows seq {previous['tenant_seq']}")
            )
        elif (
            previous is not None and seq == previous["tenant_seq"] + 1
            and fields["prev_hash"] != previous["hash"]
        ):  # fmt: skip
            found.problems.append(
                Finding("broken_link", seq, where, f"prev_hash does not link to seq {seq - 1}")
            )
        self.previous = {"tenant_seq": seq, "hash": digest}

    def finish(self) -> None:
        if self.chain is not None:
            self.found.problems.extend(self.chain.issues)
            self.found.problems.sort(key=lambda p: int(p.where.removeprefix("line ")))


def _check_manifest(found: Verification, manifest_: dict[str, Any], sha256: str) -> None:
    def wrong(detail: str) -> None:
        found.problems.append(Finding("mismatch", None, "manifest", detail))

    if manifest_.get("format") != FORMAT:
        wrong(f"format {manifest_.get('format')!r} is not {FORMAT!r}")
    if manifest_.get("count") != found.count:
        wrong(f"count {manifest_.get('count')} but the export holds {found.count} events")
    for name, head in (("first", found.first), ("last", found.last)):
        if manifest_.get(name) != _head(head):
            wrong(f"{name} is {manifest_.get(name)} but the export's is {_head(head)}")
    if manifest_.get("sha256") != sha256:
        wrong("sha256 does not match the export's bytes")
    if not manifest_.get("verified", False) or manifest_.get("issues"):
        issues = "; ".join(_issue_text(issue) for issue in manifest_.get("issues") or [])
        wrong(f"the replay that wrote this export found issues in the chain: {issues or '?'}")


def _issue_text(issue: object) -> str:
    if not isinstance(issue, dict):
        return str(issue)
    return f"{issue.get('kind')} at seq {issue.get('tenant_seq')} ({issue.get('where')})"
