"""Twilio's Messages REST resource: create, list (with filters and paging) and fetch.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` checks, in order: Basic auth of the
path's account (401/20003), an injected fault, the parameters (400 with Twilio's code), an SMS
opt-out (400/21610); then it creates the message, starts its lifecycle and answers 201.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from emulator import twilio_errors
from emulator.lifecycle import Lifecycles, plan
from emulator.message import Message
from emulator.outbound import parse_outbound
from emulator.store import Emulator
from emulator.twilio_errors import API_VERSION, TwilioError

ACCOUNT_PATH: Final = f"/{API_VERSION}/Accounts/{{account_sid}}"
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
_FILTERS: Final = ("To", "From", "DateSent", "DateSent<", "DateSent>")

type Match = Callable[[Message], bool]


def error_response(error: TwilioError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class _CutOff(Response):
    """A 201 whose connection drops halfway through the body (the `disconnect` fault)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body[:1], "more_body": True})


async def _hold(request: Request, delay_s: float) -> None:
    """Wait `delay_s`, or less if the client gives up (then nobody reads the answer anyway)."""
    deadline = asyncio.get_running_loop().time() + delay_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(left, 0.05))


def _moment(name: str, value: str) -> datetime:
    """`YYYY-MM-DD` (midnight UTC) or an ISO 8601 date-time, as the SDK serializes them."""
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise twilio_errors.invalid_parameter(name, value) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _matcher(query: Mapping[str, str]) -> Match:
    """To/From exactly; DateSent the same UTC day; DateSent< and DateSent> inclusive."""
    to, from_ = query.get("To"), query.get("From")
    day = _moment("DateSent", query["DateSent"]).date() if "DateSent" in query else None
    before = _moment("DateSent<", query["DateSent<"]) if "DateSent<" in query else None
    after = _moment("DateSent>", query["DateSent>"]) if "DateSent>" in query else None
    dated = day is not None or before is not None or after is not None

    def match(message: Message) -> bool:
        sent = message.date_sent
        if (to is not None and message.to != to) or (from_ is not None and message.from_ != from_):
            return False
        if sent is None:
            return not dated
        return (
            (day is None or sent.date() == day)
            and (before is None or sent <= before)
            and (after is None or sent >= after)
        )

    return match


def _number(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise twilio_errors.invalid_parameter(name, value)
    return int(value)


def _page(emulator: Emulator, account_sid: str, query: Mapping[str, str]) -> dict[str, object]:
    """One page, newest first, in Twilio's paging envelope; `PageToken` is `PA` + the last SID."""
    match = _matcher(query)
    found = [m for m in emulator.messages(account_sid) if match(m)]
    size = _number(query, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page = _number(query, "Page", 0, 0, 1_000_000)
    start = page * size
    token = query.get("PageToken", "")
    if token.startswith("PA"):
        sids = [m.sid for m in found]
        start = sids.index(token[2:]) + 1 if token[2:] in sids else len(found)
    items = found[start : start + size]
    base = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
    filters = [(name, query[name]) for name in _FILTERS if name in query]

    def uri(page_number: int, page_token: str | None = None) -> str:
        params = [*filters, ("PageSize", str(size)), ("Page", str(page_number))]
        if page_token is not None:
            params.append(("PageToken", page_token))
        return f"{base}?{urlencode(params)}"

    more = start + len(items) < len(found)
    return {
        "end": start + len(items) - 1 if items else start,
        "first_page_uri": uri(0),
        "next_page_uri": uri(page + 1, "PA" + items[-1].sid) if more and items else None,
        "page": page,
        "page_size": size,
        "previous_page_uri": uri(page - 1) if page > 0 else None,
        "messages": [m.resource() for m in items],
        "start": start,
        "uri": uri(page, token or None),
    }


def routes(emulator: Emulator, lifecycles: Lifecycles) -> list[Route]:
    async def create(request: Request, account_sid: str) -> Response:
        fault = emulator.take_fault()
        if fault is not None and fault.kind == "rate_limit":
            raise twilio_errors.too_many_requests(fault.retry_after_s)
        if fault is not None and fault.kind == "server_error":
            raise twilio_errors.internal_error()
        async with request.form() as form:
            items = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
        outbound = parse_outbound(items)
        accepted = emulator.accept(account_sid, outbound, items, request.headers)
        transitions = plan(
            outbound, in_window=accepted.in_window, fault=fault, read=accepted.options.read
        )
        lifecycles.start(accepted, transitions, outbound.status_callback)
        if fault is not None and fault.kind == "slow":
            await _hold(request, fault.delay_s)
        if fault is not None and fault.kind == "disconnect":
            return _CutOff(JSONResponse(accepted.resource).body, 201, media_type="application/json")
        return JSONResponse(accepted.resource, status_code=201)

    async def messages(request: Request) -> Response:
        account_sid = request.path_params["account_sid"]
        try:
            emulator.authenticate(account_sid, request.headers.get("authorization"))
            if request.method == "POST":
                return await create(request, account_sid)
            return JSONResponse(_page(emulator, account_sid, request.query_params))
        except TwilioError as error:
            return error_response(error)

    async def message(request: Request) -> Response:
        account_sid, sid = request.path_params["account_sid"], request.path_params["sid"]
        try:
            emulator.authenticate(account_sid, request.headers.get("authorization"))
            found = emulator.message(account_sid, sid)
            if found is None:
                raise twilio_errors.not_found(request.url.path)
            return JSONResponse(found.resource())
        except TwilioError as error:
            return error_response(error)

    return [
        Route(f"{ACCOUNT_PATH}/Messages.json", messages, methods=["GET", "POST"]),
        Route(f"{ACCOUNT_PATH}/Messages/{{sid}}.json", message, methods=["GET"]),
    ]


async def not_found(request: Request, exc: Exception) -> Response:
    """Any other path: Twilio's 20404."""
    return error_response(twilio_errors.not_found(request.url.path))
