"""A scriptable fake of OpenAI's Chat Completions endpoint on a real local HTTP server.

Behaves as the reference (shared/reference/twilio-and-openai.md §6, §8) says the SDK needs: Bearer
auth (401 envelope without it), every required response field, tool-call arguments as JSON
strings, `x-request-id` always, the error envelope with `retry-after-ms` on 429. Tests queue
replies and read back every request the SDK made.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True, slots=True)
class Scripted:
    status: int = 200
    content: str | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    """(name, arguments as a JSON string)."""
    error: tuple[str, str] | None = None
    """(type, code) of an error envelope."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def text(content: str) -> Scripted:
    return Scripted(content=content)


def tool(name: str, arguments: str) -> Scripted:
    return Scripted(tool_calls=[(name, arguments)])


def rate_limited() -> Scripted:
    return Scripted(429, error=("requests", "rate_limit_exceeded"),
                    headers={"retry-after-ms": "10"})  # fmt: skip


def server_error() -> Scripted:
    return Scripted(500, error=("server_error", "server_error"))


class FakeOpenAI:
    """Serve until `close()`; `base_url` is what `AsyncOpenAI(base_url=...)` takes."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        self.retry_counts: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    fake._send(self, 401, {"error": {"message": "Incorrect API key provided",
                                                     "type": "invalid_request_error",
                                                     "param": None,
                                                     "code": "invalid_api_key"}}, {})  # fmt: skip
                    return
                fake.requests.append(body)
                fake.retry_counts.append(self.headers.get("x-stainless-retry-count", ""))
                step = fake.script.popleft() if fake.script else text("(nothing scripted)")
                if step.delay_s:
                    time.sleep(step.delay_s)
                if step.error is not None:
                    kind, code = step.error
                    envelope = {"error": {"message": f"fake {code}", "type": kind, "param": None,
                                          "code": code}}  # fmt: skip
                    fake._send(self, step.status, envelope, step.headers)
                    return
                fake._send(self, step.status, fake._completion(body, step), step.headers)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
              headers: dict[str, str]) -> None:  # fmt: skip
        raw = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.send_header("x-request-id", "req_" + uuid.uuid4().hex)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)

    @staticmethod
    def _completion(request: dict[str, Any], step: Scripted) -> dict[str, Any]:
        calls = [
            {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": name, "arguments": arguments}}
            for name, arguments in step.tool_calls
        ]  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": step.content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        prompt = sum(len(str(m.get("content") or "")) for m in request.get("messages", []))
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(time.time()), "model": request.get("model", "?"),
            "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop",
                         "logprobs": None, "message": message}],
            "usage": {"prompt_tokens": prompt // 4 + 1,
                      "completion_tokens": len(step.content or "") // 4 + 1,
                      "total_tokens": prompt // 4 + len(step.content or "") // 4 + 2},
        }  # fmt: skip
