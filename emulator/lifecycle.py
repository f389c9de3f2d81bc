"""After the 201: a message's status changes, each reported by a signed status callback.

The path is decided when the message is created: a free-form WhatsApp message outside the
24-hour window fails with 63016; an injected `undelivered` fault ends it with its code; any
other goes sent → delivered (→ read on WhatsApp). A Messaging Service message first moves from
accepted to queued. The initial status never gets a callback: the 201 carried it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self

import httpx

from emulator import callbacks
from emulator.controls import Fault
from emulator.message import Message, Transition
from emulator.outbound import Outbound
from emulator.store import Accepted, Emulator
from emulator.twilio_errors import API_VERSION, channel_error_text

log = logging.getLogger("emulator.lifecycle")

OUTSIDE_WINDOW: Final = 63016
_EVENT_TYPES: Final = {"delivered": "DELIVERED", "read": "READ", "undelivered": "UNDELIVERED"}


def plan(
    outbound: Outbound, *, in_window: bool, fault: Fault | None, read: bool
) -> list[Transition]:
    steps = [Transition("queued")] if outbound.messaging_service_sid else []
    if outbound.whatsapp and outbound.free_form and not in_window:
        return [*steps, Transition("failed", OUTSIDE_WINDOW)]
    if fault is not None and fault.kind == "undelivered":
        if fault.status == "failed":
            return [*steps, Transition("failed", fault.error_code)]
        return [*steps, Transition("sent"), Transition("undelivered", fault.error_code)]
    steps += [Transition("sent"), Transition("delivered")]
    if read and outbound.whatsapp:
        steps.append(Transition("read"))
    return steps


def callback_params(message: Message, transition: Transition) -> dict[str, str]:
    """The form Twilio posts for `message` having moved to `transition.status`."""
    status = transition.status
    params = {
        "AccountSid": message.account_sid,
        "ApiVersion": API_VERSION,
        "MessageSid": message.sid,
        "SmsSid": message.sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": message.to,
    }
    if message.from_ is not None:
        params["From"] = message.from_
    if message.messaging_service_sid is not None:
        params["MessagingServiceSid"] = message.messaging_service_sid
    if transition.error_code is not None:
        params["ErrorCode"] = str(transition.error_code)
    if message.whatsapp:
        sender = message.from_ or message.messaging_service_sid or ""
        params |= {
            "ChannelPrefix": "whatsapp",
            "ChannelInstallSid": "XE" + uuid.uuid5(uuid.NAMESPACE_URL, sender).hex,
            "ChannelToAddress": message.to.removeprefix("whatsapp:"),
            "StructuredMessage": "false",
        }
        if status in _EVENT_TYPES:
            params["EventType"] = _EVENT_TYPES[status]
        if transition.error_code is not None:
            params["ChannelStatusMessage"] = channel_error_text(transition.error_code)
    elif status in {"delivered", "undelivered"}:
        params["RawDlrDoneDate"] = message.date_updated.strftime("%y%m%d%H%M")
    return params


class Lifecycles:
    """Runs every message's lifecycle as a task on the server's loop; owns the HTTP client."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        # Twilio calls out directly; a proxy from the environment has no business here.
        self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    def start(self, accepted: Accepted, transitions: Sequence[Transition], url: str | None) -> None:
        task = asyncio.create_task(self._run(accepted, transitions, url), name=accepted.sid)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("lifecycle of %s died: %r", task.get_name(), error)

    async def _run(
        self, accepted: Accepted, transitions: Sequence[Transition], url: str | None
    ) -> None:
        options = accepted.options
        held: list[dict[str, str]] = []
        for transition in transitions:
            await asyncio.sleep(options.delay_s)
            message = self._emulator.advance(accepted.sid, accepted.generation, transition)
            if message is None:
                return
            if url is not None:
                params = callback_params(message, transition)
                if options.out_of_order:
                    held.append(params)
                else:
                    await self._send(accepted, url, params)
        if url is not None:
            for params in reversed(held):
                await self._send(accepted, url, params)

    async def _send(self, accepted: Accepted, url: str, params: dict[str, str]) -> None:
        assert self._http is not None, "lifecycles run inside the app's lifespan"
        idempotency_token = str(uuid.uuid4())
        for _ in range(1 + accepted.options.duplicates):
            attempts = await callbacks.deliver(
                self._http, callbacks.target(url), params, accepted.auth_token, idempotency_token
            )
            self._emulator.log_callbacks(accepted.generation, attempts)
