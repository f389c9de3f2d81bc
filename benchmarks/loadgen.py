"""HTTP load generator run as its own process: keep-alive connections, bounded, JSON to stdout."""

# Minimal HTTP/1.1 over asyncio streams, one request in flight per connection, to 127.0.0.1 only.
# Not httpx: with 32 concurrent requests an httpx.AsyncClient managed ~210 req/s against the bare
# GET endpoint that this client drives at ~3,000-4,000 req/s, so httpx would measure itself.

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict
from urllib.parse import urlencode

HOST = "127.0.0.1"


def twilio_form(n: int) -> dict[str, str]:
    """A WhatsApp inbound-message webhook form as Twilio posts it (16 fields)."""
    sid = f"SM{n:032x}"
    return {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": "Ana Souza",
        "MessageType": "text",
        "SmsSid": sid,
        "WaId": f"55119{n % 100000:08d}",
        "SmsStatus": "received",
        "Body": "Olá! Gostaria de saber o horário de funcionamento amanhã, por favor.",
        "To": "whatsapp:+14155238886",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": "AC" + "0123456789abcdef" * 2,
        "From": f"whatsapp:+55119{n % 100000:08d}",
        "ApiVersion": "2010-04-01",
        "ChannelMetadata": '{"type":"whatsapp","data":{"context":{}}}',
    }


SAMPLE: int = 7
"""Which `twilio_form` every request posts (one body, so one signature fits them all)."""


def request_bytes(
    method: str, path: str, port: int, form: bool, headers: tuple[str, ...] = ()
) -> bytes:
    body = urlencode(twilio_form(SAMPLE)).encode() if form else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "User-Agent: zapflow-bench"]
    head += list(headers)
    if form:
        head += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class LoadResult(TypedDict):
    """What the process prints: the measured seconds, non-200 count, 200 latencies (µs)."""

    elapsed_s: float
    errors: int
    latencies_us: list[int]


@dataclass(slots=True)
class Tally:
    remaining: int
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
        if name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked responses are not supported")
    return 0


async def _connection(
    port: int, request: bytes, deadline: float, tally: Tally, record: bool
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while tally.remaining > 0 and time.perf_counter() < deadline:
            tally.remaining -= 1
            started = time.perf_counter_ns()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_content_length(head))
            if not record:
                continue
            if head[9:12] == b"200":
                tally.latencies_ns.append(time.perf_counter_ns() - started)
            else:
                tally.errors += 1
                tally.first_error = tally.first_error or head.split(b"\r\n")[0].decode()
    finally:
        writer.close()


async def _phase(args: argparse.Namespace, seconds: float, budget: int, record: bool) -> Tally:
    request = request_bytes(args.method, args.path, args.port, args.form, tuple(args.header))
    tally = Tally(remaining=budget)
    deadline = time.perf_counter() + seconds
    tasks = [
        _connection(args.port, request, deadline, tally, record) for _ in range(args.concurrency)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 30)
    return tally


async def run(args: argparse.Namespace) -> LoadResult:
    """Warm up (unrecorded), then load for `--duration` s; latencies of 200s in microseconds."""
    await _phase(args, args.warmup, args.max_requests, record=False)
    started = time.perf_counter()
    tally = await _phase(args, args.duration, args.max_requests, record=True)
    elapsed = time.perf_counter() - started
    if tally.first_error:
        print(f"loadgen: first error: {tally.first_error}", file=sys.stderr)
    return {
        "elapsed_s": elapsed,
        "errors": tally.errors,
        "latencies_us": [ns // 1000 for ns in tally.latencies_ns],
    }


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (the benchmark processes' load side), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", choices=["GET", "POST"], default="GET")
    parser.add_argument("--form", action="store_true", help="POST a Twilio-like form body")
    parser.add_argument("--header", action="append", default=[], help='"Name: value"')
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=300_000)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args), loop_factory=loop_factory())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
