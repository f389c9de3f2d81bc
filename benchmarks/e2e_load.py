"""Open-loop webhook load for the end-to-end benchmark, run as its own process.

`python -m benchmarks.e2e_load PLAN.json RESULT.json` reads a plan written by `benchmarks.e2e_bench`
(the API's port and, per request, when to send it relative to the start, its marker and the
whole signed HTTP request) and sends each request at its time whether or not earlier ones
have been answered (open loop: a slow platform does not slow the offered load down). Each
request goes on an idle keep-alive connection, or a new one when all are busy. It writes JSON:
per request its marker, when it was due, and when its response was read completely
(`time.monotonic()`, which is one clock for every process on the machine) with the status.

The same minimal HTTP/1.1 client as `benchmarks.loadgen`, for the same reason: httpx would
measure itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypedDict

from benchmarks.loadgen import HOST, loop_factory

PREOPEN: Final = 16
START_DELAY_S: Final = 0.5


class Outcome(TypedDict):
    marker: str
    due: float
    ok: float
    status: int


@dataclass(slots=True)
class Pool:
    port: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    opened: int = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection, and whether it was used before (the server may have closed it)."""
        while self.idle:
            reader, writer = self.idle.pop(0)  # the longest idle first: keeps all of them warm
            if not reader.at_eof():
                return reader, writer, True
            writer.close()
        self.opened += 1
        reader, writer = await asyncio.open_connection(HOST, self.port)
        return reader, writer, False


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _exchange(pool: Pool, request: bytes) -> int:
    """Send on a pooled connection; a reused one the server closed meanwhile (its keep-alive
    timeout) is replaced once, before any answer was read: the request was not taken."""
    for _ in range(2):
        reader, writer, reused = await pool.take()
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                continue
            raise
        await reader.readexactly(_content_length(head))
        pool.idle.append((reader, writer))
        return int(head[9:12])
    raise ConnectionError("the server closed two connections in a row")


async def _send(pool: Pool, marker: str, due: float, request: bytes) -> Outcome:
    status = 0
    try:
        status = await _exchange(pool, request)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        print(f"e2e_load: {marker}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"marker": marker, "due": due, "ok": time.monotonic(), "status": status}


async def run(plan: dict[str, object]) -> dict[str, object]:
    port = plan["port"]
    entries = plan["requests"]
    assert isinstance(port, int)
    assert isinstance(entries, list)
    pool = Pool(port)
    for _ in range(PREOPEN):
        pool.idle.append(await asyncio.open_connection(HOST, port))
    pool.opened = PREOPEN
    start = time.monotonic() + START_DELAY_S
    tasks = []
    late = 0.0
    for at, marker, text in entries:
        due = start + float(at)
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late = max(late, -wait)
        tasks.append(asyncio.create_task(_send(pool, str(marker), due, str(text).encode())))
    outcomes = await asyncio.gather(*tasks)
    for _reader, writer in pool.idle:
        writer.close()
    return {"outcomes": outcomes, "connections": pool.opened, "max_late_s": late,
            "cpu_s": time.process_time()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e_load")
    parser.add_argument("plan", type=Path)
    parser.add_argument("result", type=Path)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    result = asyncio.run(run(plan), loop_factory=loop_factory())
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
