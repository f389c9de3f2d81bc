"""A minimal OpenAI Chat Completions server for the end-to-end benchmark, run as its own process.

`python -m benchmarks.fake_llm --port P [--delay-s S]` answers `POST /v1/chat/completions` with
a plain assistant message after S seconds (0: at once), echoing the `[m:…]` markers of the user
messages after the last assistant message (the newest last) so that the reply Twilio receives
can be matched to the inbound messages it answers: the one that caused the turn and any that
came while the conversation's previous turn ran. It sends what the real `openai` SDK needs to
accept an answer (the fields of tests/integration/fake_openai.py's completions,
`x-request-id`), and nothing else: no auth check, no scripting, no tool calls.
`POST /_bench/delay` with `{"delay_s": S}` changes the delay for later requests;
`GET /_bench/stats` returns how many completions were answered.

HTTP/1.1 over asyncio streams (keep-alive, Content-Length bodies only), so that it costs the
two shared cores as little as possible; the benchmark's platform processes need them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import orjson

from benchmarks.loadgen import loop_factory

MARKER: Final = re.compile(r"\[m:[^\]]+\]")
REPLY: Final = "Claro! Vou verificar isso para você agora mesmo."
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found"}


@dataclass(slots=True)
class State:
    delay_s: float
    answered: int = 0


def marker_of(text: str) -> str:
    """The `[m:…]` marker in `text`, or "" when there is none."""
    found = MARKER.search(text)
    return found.group(0) if found else ""


def unanswered_markers(messages: list[dict[str, Any]]) -> list[str]:
    """The markers of the user messages after the last assistant message, oldest first: the
    messages this turn is the first to see (one, or a burst that came during the last turn)."""
    found: list[str] = []
    for message in reversed(messages):
        if message.get("role") == "assistant":
            break
        if message.get("role") == "user" and (marker := marker_of(str(message.get("content")))):
            found.append(marker)
    return found[::-1]


def completion(request: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion answering the messages since the last reply, their markers echoed."""
    messages = request.get("messages") or []
    content = " ".join([REPLY, *unanswered_markers(messages)])
    prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
    answer = len(content) // 4 + 1
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": answer,
                  "total_tokens": prompt + answer},
    }  # fmt: skip


def _response(status: int, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-request-id: req_{uuid.uuid4().hex}\r\n"
        "\r\n"
    )
    return head.encode() + body


async def _answer(state: State, method: str, path: str, body: bytes) -> bytes:
    if method == "POST" and path.endswith("/chat/completions"):
        request = orjson.loads(body or b"{}")
        if state.delay_s > 0:
            await asyncio.sleep(state.delay_s)
        state.answered += 1
        return _response(200, orjson.dumps(completion(request)))
    if method == "POST" and path == "/_bench/delay":
        state.delay_s = float(orjson.loads(body)["delay_s"])
        return _response(200, orjson.dumps({"delay_s": state.delay_s}))
    if method == "GET" and path == "/_bench/stats":
        return _response(200, orjson.dumps({"answered": state.answered}))
    return _response(404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}')


async def _connection(
    state: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            writer.write(await _answer(state, method, path.split("?")[0], body))
            await writer.drain()
            if close:
                return
    finally:
        writer.close()


async def serve(port: int, delay_s: float) -> None:
    state = State(delay_s)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _connection(state, reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"fake LLM on http://127.0.0.1:{port}/v1", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fake_llm")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.delay_s), loop_factory=loop_factory())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
