"""The Twilio emulator over real HTTP, driven by the official SDK (twilio 9.13.0) as a sender would.

A uvicorn server on a free port serves the emulator; a small stdlib HTTP server receives its
status callbacks. Every check is on what crosses the wire: status codes, error codes and
bodies, the Message resource, paging, callbacks and their signatures. Last, the open-accounts
mode `zapflow up` runs it in.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from emulator import CallbackOptions, EmulatorServer, Fault, create_app, serve
from emulator.callbacks import signature
from emulator.store import Emulator

pytestmark = pytest.mark.integration

ACCOUNT, TOKEN = "AC" + uuid.uuid4().hex, uuid.uuid4().hex
OTHER, OTHER_TOKEN = "AC" + uuid.uuid4().hex, uuid.uuid4().hex
SENDER = "whatsapp:+14155238886"
CONTACT = "whatsapp:+5511987654321"
NEIGHBOUR = "whatsapp:+5511912345678"
TEMPLATE = "HX" + "b" * 32
FAST = CallbackOptions(delay_s=0.01)
WAIT_S = 5.0
FIELDS = [
    "body",
    "num_segments",
    "direction",
    "from",
    "to",
    "date_updated",
    "price",
    "error_message",
    "uri",
    "account_sid",
    "num_media",
    "status",
    "messaging_service_sid",
    "sid",
    "date_sent",
    "date_created",
    "error_code",
    "price_unit",
    "api_version",
    "subresource_uris",
]
RFC2822 = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000")
CALLBACK_KEYS = {
    "AccountSid",
    "ApiVersion",
    "From",
    "To",
    "MessageSid",
    "SmsSid",
    "SmsStatus",
    "MessageStatus",
    "ChannelPrefix",
    "ChannelInstallSid",
    "ChannelToAddress",
}


@dataclass(frozen=True)
class Callback:
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float

    @property
    def status(self) -> str:
        return self.params["MessageStatus"]


class Receiver:
    """Records every POST; `/status/<code>` answers with that code, any other path with 200."""

    def __init__(self) -> None:
        self.callbacks: list[Callback] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                callback = Callback(
                    url=receiver.base + self.path,
                    params=dict(parse_qsl(body, keep_blank_values=True)),
                    headers=dict(self.headers.items()),
                    at=time.monotonic(),
                )
                # Recorded before the answer: once answered, the emulator sends the next one,
                # whose handler thread could otherwise record it first.
                with receiver._changed:
                    receiver.callbacks.append(callback)
                    receiver._changed.notify_all()
                last = urlsplit(self.path).path.rsplit("/", 1)[-1]
                self.send_response(int(last) if last.isdigit() else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/status") -> str:
        return self.base + path

    def wait_for(self, count: int) -> list[Callback]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.callbacks) >= count, WAIT_S):
                raise AssertionError(f"{len(self.callbacks)} callbacks, expected {count}")
            return list(self.callbacks)

    def settled(self, count: int) -> list[Callback]:
        """Exactly `count` callbacks, and no more after many times the emulator's delay."""
        self.wait_for(count)
        time.sleep(0.2)
        assert [c.status for c in self.callbacks][count:] == []
        return list(self.callbacks)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    app = create_app({ACCOUNT: TOKEN, OTHER: OTHER_TOKEN}, callbacks=FAST)
    with EmulatorServer(app) as server:
        yield server


@pytest.fixture
def emulator(server: EmulatorServer) -> Emulator:
    server.emulator.reset()
    return server.emulator


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def sdk(
    server: EmulatorServer,
    sid: str = ACCOUNT,
    token: str = TOKEN,
    *,
    account: str | None = None,
    timeout: float = 5.0,
) -> Any:
    """The SDK's client pointed at the emulator, with `account` in its paths (default: `sid`).

    The environment passed is not empty, or the SDK would read TWILIO_EDGE/TWILIO_REGION from
    os.environ, and either one rewrites even a local base URL.
    """
    client = Client(
        sid,
        token,
        account_sid=account,
        http_client=TwilioHttpClient(timeout=timeout),
        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
    )
    client.api.base_url = server.url
    return client


@pytest.fixture
def client(server: EmulatorServer, emulator: Emulator) -> Any:
    return sdk(server)


def last_json(client: Any) -> Any:
    return json.loads(client.http_client._test_only_last_response.text)


def statuses(callbacks: list[Callback]) -> list[str]:
    return [c.status for c in callbacks]


def fetch_until(client: Any, sid: str, status: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while (message := client.messages(sid).fetch()).status != status:
        assert time.monotonic() < deadline, f"{sid} stayed {message.status}"
        time.sleep(0.02)
    return message


def test_create_answers_201_with_every_field_of_the_resource(
    client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    emulator.record_inbound(CONTACT, SENDER)
    before = datetime.now(UTC).replace(microsecond=0)
    message = client.messages.create(
        to=CONTACT,
        from_=SENDER,
        body="Olá, Ana! Sua consulta é amanhã.",
        media_url=["https://example.com/a.png", "https://example.com/b.png"],
        status_callback=receiver.url(),
    )
    response = client.http_client._test_only_last_response
    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.text)
    assert list(body) == FIELDS
    sid = body["sid"]
    assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
    uri = f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json"
    assert body | {"date_created": None, "date_updated": None} == {
        "body": "Olá, Ana! Sua consulta é amanhã.",
        "num_segments": "1",
        "direction": "outbound-api",
        "from": SENDER,
        "to": CONTACT,
        "date_updated": None,
        "price": None,
        "error_message": None,
        "uri": uri,
        "account_sid": ACCOUNT,
        "num_media": "2",
        "status": "queued",
        "messaging_service_sid": None,
        "sid": sid,
        "date_sent": None,
        "date_created": None,
        "error_code": None,
        "price_unit": "USD",
        "api_version": "2010-04-01",
        "subresource_uris": {"media": f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}/Media.json"},
    }
    for name in ("date_created", "date_updated"):
        assert RFC2822.fullmatch(body[name]), body[name]
        assert before <= parsedate_to_datetime(body[name]) <= datetime.now(UTC)
    assert (message.sid, message.status, message.num_media) == (sid, "queued", "2")
    assert message.date_created == parsedate_to_datetime(body["date_created"])
    assert message.error_code is None
    (received,) = emulator.received()
    assert received["sid"] == sid
    assert received["params"]["MediaUrl"] == [
        "https://example.com/a.png",
        "https://example.com/b.png",
    ]


def test_a_messaging_service_message_starts_accepted_and_is_queued_by_callback(
    client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    service = "MG" + "c" * 32
    emulator.record_inbound(CONTACT, SENDER)
    message = client.messages.create(
        to=CONTACT, messaging_service_sid=service, body="oi", status_callback=receiver.url()
    )
    assert (message.status, message.from_, message.messaging_service_sid) == (
        "accepted",
        None,
        service,
    )
    callbacks = receiver.settled(4)
    assert statuses(callbacks) == ["queued", "sent", "delivered", "read"]
    assert all(c.params["MessagingServiceSid"] == service for c in callbacks)


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("a" * 160, "1"),
        ("a" * 161, "2"),
        ("{" * 80, "1"),  # GSM-7 extension characters take two septets
        ("{" * 81, "2"),
        ("ã😀" * 23, "1"),  # UCS-2: the emoji takes two code units
        ("ã😀" * 24, "2"),
        ("a" * 306, "2"),
        ("a" * 307, "3"),
    ],
)
def test_sms_bodies_are_counted_in_segments(client: Any, body: str, segments: str) -> None:
    message = client.messages.create(to="+15005550006", from_="+15005550001", body=body)
    assert message.num_segments == segments
    assert client.messages.create(to=CONTACT, from_=SENDER, body=body).num_segments == "1"


@pytest.mark.parametrize(
    ("sid", "token"),
    [(ACCOUNT, "not-the-token"), ("AC" + "0" * 32, TOKEN), (OTHER, OTHER_TOKEN)],
    ids=["wrong-token", "unknown-account", "another-accounts-credentials"],  # not open by default
)
def test_bad_credentials_answer_401_with_code_20003(
    server: EmulatorServer, emulator: Emulator, sid: str, token: str
) -> None:
    client = sdk(server, sid, token, account=ACCOUNT)
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=CONTACT, from_=SENDER, body="oi")
    assert (raised.value.status, raised.value.code) == (401, 20003)
    assert raised.value.msg == "Unable to create record: Authenticate"
    with pytest.raises(TwilioException, match="HTTP 401") as listed:
        client.messages.list()  # the SDK's pages raise the base class, status in the text
    assert '"code":20003' in str(listed.value)
    assert emulator.received() == []


def test_a_rotated_auth_token_replaces_the_old_one_at_once() -> None:
    app = create_app({ACCOUNT: TOKEN}, callbacks=FAST)
    with EmulatorServer(app) as own:
        own.emulator.record_inbound(CONTACT, SENDER)
        own.emulator.rotate_auth_token(ACCOUNT, "the-new-token")
        with pytest.raises(TwilioRestException) as raised:
            sdk(own).messages.create(to=CONTACT, from_=SENDER, body="oi")
        assert (raised.value.status, raised.value.code) == (401, 20003)
        created = sdk(own, token="the-new-token").messages.create(
            to=CONTACT, from_=SENDER, body="oi"
        )
        assert [m["sid"] for m in own.emulator.received()] == [created.sid]


def test_a_request_without_credentials_gets_twilios_exact_401(
    server: EmulatorServer, emulator: Emulator
) -> None:
    url = f"{server.url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    response = httpx.post(url, data={"To": CONTACT, "From": SENDER, "Body": "oi"})
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert emulator.received() == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"to": "", "from_": SENDER, "body": "oi"}, 21604),
        ({"to": "whatsapp:5511987654321", "from_": SENDER, "body": "oi"}, 21211),
        ({"to": "+55 11 98765-4321", "from_": "+15005550001", "body": "oi"}, 21211),
        ({"to": "sms:+5511987654321", "from_": SENDER, "body": "oi"}, 21211),
        ({"to": CONTACT, "body": "oi"}, 21603),
        ({"to": CONTACT, "from_": SENDER}, 21602),
        ({"to": CONTACT, "from_": SENDER, "body": ""}, 21602),
        ({"to": CONTACT, "from_": SENDER, "body": "x" * 1601}, 21617),
        ({"to": CONTACT, "from_": SENDER, "body": "oi", "status_callback": "ftp://h/x"}, 21609),
        ({"to": CONTACT, "from_": SENDER, "body": "oi", "status_callback": "http://a_b/"}, 21609),
    ],
)
def test_invalid_requests_answer_400_with_twilios_code(
    client: Any, emulator: Emulator, params: dict[str, str], code: int
) -> None:
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(**params)
    assert (raised.value.status, raised.value.code) == (400, code)
    assert raised.value.msg.startswith("Unable to create record: ")
    body = last_json(client)
    assert body == {
        "code": code,
        "message": body["message"],
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }
    assert emulator.received() == []


def test_the_limits_themselves_are_accepted(client: Any) -> None:
    assert client.messages.create(to=CONTACT, from_=SENDER, body="x" * 1600).status == "queued"
    bsuid = client.messages.create(to="whatsapp:US.13491208655302741918", from_=SENDER, body="oi")
    assert bsuid.status == "queued"
    template_only = client.messages.create(to=CONTACT, from_=SENDER, content_sid=TEMPLATE)
    assert template_only.body == ""


def test_an_sms_stop_blocks_the_pair_with_21610_until_start(
    client: Any, emulator: Emulator
) -> None:
    contact, number = "+15005550006", "+15005550001"
    emulator.record_inbound(contact, number, body=" stop ")
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=contact, from_=number, body="Promoção!")
    assert (raised.value.status, raised.value.code) == (400, 21610)
    assert client.messages.create(to=contact, from_="+15005550002", body="oi").status == "queued"
    emulator.record_inbound(contact, number, body="START")
    assert client.messages.create(to=contact, from_=number, body="oi").status == "queued"
    emulator.record_inbound(CONTACT, SENDER, body="STOP")  # no such filtering on WhatsApp
    assert client.messages.create(to=CONTACT, from_=SENDER, body="oi").status == "queued"


def test_messages_can_be_fetched_and_listed_with_filters_and_pages(
    server: EmulatorServer, client: Any, emulator: Emulator
) -> None:
    for contact in (CONTACT, NEIGHBOUR):
        emulator.record_inbound(contact, SENDER)
    sids = [
        client.messages.create(to=to, from_=SENDER, body=f"#{n}").sid
        for n, to in enumerate([CONTACT, NEIGHBOUR, CONTACT])
    ]
    fetched = client.messages(sids[1]).fetch()
    assert (fetched.sid, fetched.to, fetched.body) == (sids[1], NEIGHBOUR, "#1")
    assert list(last_json(client)) == FIELDS

    assert [m.sid for m in client.messages.list(to=CONTACT)] == [sids[2], sids[0]]
    assert [m.sid for m in client.messages.list(from_=SENDER, page_size=2)] == sids[::-1]
    assert [m.sid for m in client.messages.list(limit=1)] == [sids[2]]

    auth = (ACCOUNT, TOKEN)
    first = httpx.get(
        f"{server.url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
        params={"From": SENDER, "PageSize": 2},
        auth=auth,
    ).json()
    assert set(first) == {
        "end",
        "first_page_uri",
        "next_page_uri",
        "page",
        "page_size",
        "previous_page_uri",
        "messages",
        "start",
        "uri",
    }
    assert (first["page"], first["page_size"], first["start"], first["end"]) == (0, 2, 0, 1)
    assert first["previous_page_uri"] is None
    assert [m["sid"] for m in first["messages"]] == [sids[2], sids[1]]
    second = httpx.get(server.url + first["next_page_uri"], auth=auth).json()
    assert [m["sid"] for m in second["messages"]] == [sids[0]]
    assert (second["page"], second["start"], second["next_page_uri"]) == (1, 2, None)
    assert second["previous_page_uri"] is not None

    for sid in sids:
        fetch_until(client, sid, "read")
    now = datetime.now(UTC)
    assert len(client.messages.list(date_sent_after=now - timedelta(minutes=1))) == 3
    assert client.messages.list(date_sent_before=now - timedelta(days=1)) == []
    assert len(client.messages.list(date_sent=now)) == 3
    assert client.messages.list(date_sent=now - timedelta(days=1)) == []

    with pytest.raises(TwilioRestException) as raised:
        client.messages("SM" + "0" * 32).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    other = sdk(server, OTHER, OTHER_TOKEN)
    assert other.messages.list() == []
    with pytest.raises(TwilioRestException):
        other.messages(sids[0]).fetch()


@pytest.mark.parametrize(
    ("inbound_hours_ago", "content", "expected"),
    [
        (None, {"body": "Oi, tudo bem?"}, ["failed"]),
        (25, {"body": "Oi, tudo bem?"}, ["failed"]),
        (25, {"media_url": ["https://example.com/a.png"]}, ["failed"]),
        (25, {"body": "Oi", "content_sid": TEMPLATE}, ["failed"]),
        (23, {"body": "Oi, tudo bem?"}, ["sent", "delivered", "read"]),
        (
            None,
            {"content_sid": TEMPLATE, "content_variables": '{"1":"Ana"}'},
            ["sent", "delivered", "read"],
        ),
    ],
    ids=[
        "never-wrote",
        "wrote-25h-ago",
        "media-25h",
        "body-and-template",
        "wrote-23h-ago",
        "template",
    ],
)
def test_the_24_hour_window_fails_free_form_messages_with_63016_after_a_201(
    client: Any,
    emulator: Emulator,
    receiver: Receiver,
    inbound_hours_ago: int | None,
    content: dict[str, Any],
    expected: list[str],
) -> None:
    if inbound_hours_ago is not None:
        at = datetime.now(UTC) - timedelta(hours=inbound_hours_ago)
        emulator.record_inbound(CONTACT, SENDER, at)
    emulator.record_inbound(NEIGHBOUR, SENDER)  # another contact's window is no help
    message = client.messages.create(
        to=CONTACT, from_=SENDER, status_callback=receiver.url(), **content
    )
    assert client.http_client._test_only_last_response.status_code == 201
    assert message.status == "queued"
    callbacks = receiver.settled(len(expected))
    assert statuses(callbacks) == expected
    final = client.messages(message.sid).fetch()
    assert final.status == expected[-1]
    if expected == ["failed"]:
        (failed,) = callbacks
        assert failed.params["ErrorCode"] == "63016"
        assert "outside the allowed window" in failed.params["ChannelStatusMessage"]
        assert (final.error_code, final.date_sent) == (63016, None)
        assert "outside the allowed window" in final.error_message
    else:
        assert all("ErrorCode" not in c.params for c in callbacks)
        assert (final.error_code, final.error_message) == (None, None)
        assert final.date_sent is not None


def test_callbacks_are_signed_over_the_called_url_and_arrive_in_order(
    client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    emulator.record_inbound(CONTACT, SENDER)
    called = receiver.url("/status?tenant=clinica&x=1")
    message = client.messages.create(
        to=CONTACT, from_=SENDER, body="oi", status_callback=called + "#rc=0&rp=ct"
    )
    callbacks = receiver.settled(3)
    assert statuses(callbacks) == ["sent", "delivered", "read"]
    for callback in callbacks:
        assert callback.url == called
        signed = callback.headers["X-Twilio-Signature"]
        assert RequestValidator(TOKEN).validate(called, callback.params, signed)
        assert not RequestValidator(OTHER_TOKEN).validate(called, callback.params, signed)
        tampered = callback.params | {"MessageStatus": "failed"}
        assert not RequestValidator(TOKEN).validate(called, tampered, signed)
        assert callback.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert callback.headers["I-Twilio-Idempotency-Token"]
        assert set(callback.params) >= CALLBACK_KEYS
        assert callback.params["MessageSid"] == callback.params["SmsSid"] == message.sid
        assert callback.params["SmsStatus"] == callback.status
        assert (callback.params["AccountSid"], callback.params["ApiVersion"]) == (
            ACCOUNT,
            "2010-04-01",
        )
        assert (callback.params["To"], callback.params["From"]) == (CONTACT, SENDER)
        assert callback.params["ChannelToAddress"] == "+5511987654321"
        assert re.fullmatch(r"XE[0-9a-f]{32}", callback.params["ChannelInstallSid"])
    assert [c.params.get("EventType") for c in callbacks] == [None, "DELIVERED", "READ"]
    assert len({c.headers["I-Twilio-Idempotency-Token"] for c in callbacks}) == 3


def test_the_signature_matches_twilios_documented_example() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert signature("12345", url, params) == "L/OH5YylLD5NRKLltdqwSvS0BnU="


def test_callbacks_out_of_order_and_duplicated_set_over_http(
    server: EmulatorServer, client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    options = {"delay_s": 0.01, "out_of_order": True, "duplicates": 1, "read": True}
    response = httpx.put(f"{server.url}/_emulator/callback-options", json=options)
    assert (response.status_code, response.json()) == (200, options)
    emulator.record_inbound(CONTACT, SENDER)
    client.messages.create(to=CONTACT, from_=SENDER, body="oi", status_callback=receiver.url())
    callbacks = receiver.settled(6)
    assert statuses(callbacks) == ["read", "read", "delivered", "delivered", "sent", "sent"]
    tokens = [c.headers["I-Twilio-Idempotency-Token"] for c in callbacks]
    assert tokens[0] == tokens[1] != tokens[2] == tokens[3] != tokens[4] == tokens[5]
    assert all(
        RequestValidator(TOKEN).validate(c.url, c.params, c.headers["X-Twilio-Signature"])
        for c in callbacks
    )
    assert client.messages.list(to=CONTACT)[0].status == "read"  # the record moved in order


def test_callback_options_in_python_duplicates_in_order_and_delays(
    client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    emulator.configure_callbacks(CallbackOptions(delay_s=0.01, duplicates=2, read=False))
    emulator.record_inbound(CONTACT, SENDER)
    client.messages.create(to=CONTACT, from_=SENDER, body="oi", status_callback=receiver.url())
    assert statuses(receiver.settled(6)) == ["sent"] * 3 + ["delivered"] * 3

    slow = Receiver()
    try:
        emulator.configure_callbacks(CallbackOptions(delay_s=0.25))
        created = time.monotonic()
        client.messages.create(to=CONTACT, from_=SENDER, body="oi", status_callback=slow.url())
        moments = [created, *(c.at for c in slow.wait_for(3))]
        gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
        assert all(gap >= 0.2 for gap in gaps), gaps
    finally:
        slow.close()


def test_callback_delivery_follows_twilios_retry_overrides(
    client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    sms = {"to": "+15005550006", "from_": "+15005550001", "body": "oi"}  # sent, delivered
    client.messages.create(**sms, status_callback=receiver.url("/status/500"))
    assert statuses(receiver.settled(2)) == ["sent", "delivered"]  # no retry on a 5xx

    retried = Receiver()
    try:
        client.messages.create(**sms, status_callback=retried.url("/status/503#rc=2&rp=5xx"))
        assert statuses(retried.settled(6)) == ["sent"] * 3 + ["delivered"] * 3
    finally:
        retried.close()

    emulator.reset()
    closed = Receiver()
    closed.close()  # nothing listens there any more: connection refused
    client.messages.create(**sms, status_callback=closed.url())
    deadline = time.monotonic() + WAIT_S
    while len(emulator.callbacks()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    attempts = emulator.callbacks()
    assert [(a["params"]["MessageStatus"], a["attempt"]) for a in attempts] == [
        ("sent", 1),
        ("sent", 2),
        ("delivered", 1),
        ("delivered", 2),
    ]
    assert all(a["status_code"] is None and a["error"] for a in attempts)


def test_injected_429s_are_never_processed_and_carry_retry_after(
    server: EmulatorServer, client: Any, emulator: Emulator
) -> None:
    fault = {"kind": "rate_limit", "count": 2, "retry_after_s": 3}
    assert httpx.post(f"{server.url}/_emulator/faults", json=fault).status_code == 204
    for _ in range(2):
        with pytest.raises(TwilioRestException) as raised:
            client.messages.create(to=CONTACT, from_=SENDER, body="oi")
        assert (raised.value.status, raised.value.code) == (429, 20429)
        response = client.http_client._test_only_last_response
        assert response.headers["Retry-After"] == "3"
        assert json.loads(response.text)["more_info"].endswith("/20429")
    sent = client.messages.create(to=CONTACT, from_=SENDER, body="oi")
    assert [r["sid"] for r in emulator.received()] == [sent.sid]
    assert [m.sid for m in client.messages.list()] == [sent.sid]


def test_injected_500_then_normal_service(client: Any, emulator: Emulator) -> None:
    emulator.inject(Fault(kind="server_error"))
    with pytest.raises(TwilioRestException) as raised:
        client.messages.create(to=CONTACT, from_=SENDER, body="oi")
    assert (raised.value.status, raised.value.code) == (500, 20500)
    assert emulator.received() == []
    assert client.messages.create(to=CONTACT, from_=SENDER, body="oi").status == "queued"


def test_a_slow_answer_times_the_client_out_but_the_message_exists(
    server: EmulatorServer, client: Any, emulator: Emulator
) -> None:
    emulator.inject(Fault(kind="slow", delay_s=0.4))
    started = time.monotonic()
    assert client.messages.create(to=CONTACT, from_=SENDER, body="lento").status == "queued"
    assert time.monotonic() - started >= 0.4

    emulator.inject(Fault(kind="slow", delay_s=2.0))
    impatient = sdk(server, timeout=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        impatient.messages.create(to=CONTACT, from_=SENDER, body="ambíguo")
    (found,) = client.messages.list(to=CONTACT, limit=1)
    assert found.body == "ambíguo"  # reconciled by listing
    started = time.monotonic()
    client.messages.create(to=CONTACT, from_=SENDER, body="rápido")
    assert time.monotonic() - started < 0.3


def test_a_dropped_connection_after_creation_is_reconciled_by_listing(
    client: Any, emulator: Emulator
) -> None:
    emulator.inject(Fault(kind="disconnect"))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        client.messages.create(to=CONTACT, from_=SENDER, body="cortado")
    (received,) = emulator.received()
    (found,) = client.messages.list(to=CONTACT)
    assert (found.sid, found.body) == (received["sid"], "cortado")


def test_an_injected_channel_failure_arrives_as_undelivered(
    client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    emulator.inject(Fault(kind="undelivered", error_code=63018))
    emulator.record_inbound(CONTACT, SENDER)
    message = client.messages.create(
        to=CONTACT, from_=SENDER, body="oi", status_callback=receiver.url()
    )
    assert message.status == "queued"
    sent, undelivered = receiver.settled(2)
    assert (sent.status, undelivered.status) == ("sent", "undelivered")
    assert undelivered.params["ErrorCode"] == "63018"
    assert undelivered.params["EventType"] == "UNDELIVERED"
    assert client.messages(message.sid).fetch().error_code == 63018


def test_the_received_listing_inbound_endpoint_and_reset(
    server: EmulatorServer, client: Any, emulator: Emulator, receiver: Receiver
) -> None:
    admin = f"{server.url}/_emulator"
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    inbound = {"recipient": CONTACT, "sender": SENDER, "at": at}
    assert httpx.post(f"{admin}/inbound", json=inbound).status_code == 204
    first = client.messages.create(
        to=CONTACT,
        from_=SENDER,
        body="oi",
        media_url=["https://example.com/1.png", "https://example.com/2.png"],
        status_callback=receiver.url(),
    )
    second = client.messages.create(
        to=NEIGHBOUR, from_=SENDER, content_sid=TEMPLATE, content_variables='{"1":"Ana"}'
    )
    listing = httpx.get(f"{admin}/messages").json()["messages"]
    assert [(m["sid"], m["account_sid"]) for m in listing] == [
        (first.sid, ACCOUNT),
        (second.sid, ACCOUNT),
    ]
    assert listing[0]["params"] == {
        "To": [CONTACT],
        "From": [SENDER],
        "Body": ["oi"],
        "MediaUrl": ["https://example.com/1.png", "https://example.com/2.png"],
        "StatusCallback": [receiver.url()],
    }
    assert listing[1]["params"]["ContentVariables"] == ['{"1":"Ana"}']
    headers = {name.lower(): value for name, value in listing[0]["headers"].items()}
    assert headers["user-agent"].startswith("twilio-python/9.13.0")
    assert "authorization" not in headers
    assert statuses(receiver.settled(3)) == ["sent", "delivered", "read"]  # window was open

    bad = httpx.post(f"{admin}/faults", json={"kind": "meltdown"})
    assert bad.status_code == 400
    assert httpx.post(f"{admin}/faults", json={"kind": "server_error"}).status_code == 204
    assert httpx.post(f"{admin}/reset").status_code == 204
    assert httpx.get(f"{admin}/messages").json() == {"messages": []}
    assert httpx.get(f"{admin}/callbacks").json() == {"callbacks": []}
    assert client.messages.list() == []
    after = client.messages.create(  # the fault and the window are gone too
        to=CONTACT, from_=SENDER, body="oi", status_callback=receiver.url("/after")
    )
    assert after.status == "queued"
    assert fetch_until(client, after.sid, "failed").error_code == 63016


# The SDK's async client passes aiohttp.BasicAuth as `auth=`, both deprecated by aiohttp now.
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning")
async def test_serve_runs_the_emulator_on_the_callers_event_loop() -> None:
    app = create_app({ACCOUNT: TOKEN}, callbacks=FAST)
    app.emulator.record_inbound(CONTACT, SENDER)
    async with serve(app) as url, AsyncTwilioHttpClient(timeout=5) as http:
        client = Client(ACCOUNT, TOKEN, http_client=http, environment={"TWILIO_EDGE": ""})
        client.api.base_url = url
        message = await client.messages.create_async(to=CONTACT, from_=SENDER, body="oi")
        assert message.status == "queued"
        fetched = await client.messages(message.sid).fetch_async()
        assert fetched.sid == message.sid
    assert [r["sid"] for r in app.emulator.received()] == [message.sid]


# -- open-accounts mode, as `zapflow up` and `zapflow emulator` run it: any well-formed account
# SID is served; the password of its first request becomes its auth token, which later requests
# must present and which signs its status callbacks.


@pytest.fixture(scope="module")
def open_server() -> Iterator[EmulatorServer]:
    app = create_app({ACCOUNT: TOKEN}, callbacks=FAST, open_accounts=True)
    with EmulatorServer(app) as server:
        yield server


@pytest.fixture
def open_emulator(open_server: EmulatorServer) -> Emulator:
    open_server.emulator.reset()
    return open_server.emulator


def _new_account() -> tuple[str, str]:
    return "AC" + uuid.uuid4().hex, uuid.uuid4().hex


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_an_unknown_account_is_learned_from_its_first_create_and_its_token_then_holds(
    open_server: EmulatorServer, open_emulator: Emulator, receiver: Receiver
) -> None:
    account, token = _new_account()
    open_emulator.record_inbound(CONTACT, SENDER)
    client = sdk(open_server, account, token)
    message = client.messages.create(
        to=CONTACT, from_=SENDER, body="Olá!", status_callback=receiver.url()
    )
    assert (message.status, message.account_sid) == ("queued", account)
    assert fetch_until(client, message.sid, "read").account_sid == account
    assert [m.sid for m in client.messages.list(to=CONTACT)] == [message.sid]
    callbacks = receiver.settled(3)
    assert statuses(callbacks) == ["sent", "delivered", "read"]
    validator = RequestValidator(token)  # signed with the learned token, as Twilio would
    for callback in callbacks:
        assert callback.params["AccountSid"] == account
        assert validator.validate(
            callback.url, callback.params, callback.headers["X-Twilio-Signature"]
        )

    intruder = sdk(open_server, account, "another-token")
    with pytest.raises(TwilioRestException) as raised:
        intruder.messages.create(to=CONTACT, from_=SENDER, body="oi")
    assert (raised.value.status, raised.value.code) == (401, 20003)
    with pytest.raises(TwilioException, match="HTTP 401"):
        intruder.messages(message.sid).fetch()
    assert [r["sid"] for r in open_emulator.received()] == [message.sid]


def test_a_list_or_a_fetch_can_be_the_first_request(
    open_server: EmulatorServer, open_emulator: Emulator
) -> None:
    listed, token = _new_account()
    assert sdk(open_server, listed, token).messages.list() == []
    with pytest.raises(TwilioException, match="HTTP 401"):
        sdk(open_server, listed, "not-" + token).messages.list()

    fetched, token = _new_account()
    with pytest.raises(TwilioRestException) as raised:
        sdk(open_server, fetched, token).messages("SM" + "0" * 32).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)  # known now, no such message
    with pytest.raises(TwilioRestException) as refused:
        sdk(open_server, fetched, "not-" + token).messages("SM" + "0" * 32).fetch()
    assert (refused.value.status, refused.value.code) == (401, 20003)


def test_accounts_stay_separate_and_configured_tokens_cannot_be_replaced(
    open_server: EmulatorServer, open_emulator: Emulator
) -> None:
    first, first_token = _new_account()
    second, second_token = _new_account()
    open_emulator.record_inbound(CONTACT, SENDER)
    one = sdk(open_server, first, first_token).messages.create(to=CONTACT, from_=SENDER, body="1")
    two = sdk(open_server, second, second_token).messages.create(to=CONTACT, from_=SENDER, body="2")
    assert [m.sid for m in sdk(open_server, first, first_token).messages.list()] == [one.sid]
    assert [m.sid for m in sdk(open_server, second, second_token).messages.list()] == [two.sid]
    with pytest.raises(TwilioRestException) as cross:  # the first account's path, second's keys
        sdk(open_server, second, second_token, account=first).messages.create(
            to=CONTACT, from_=SENDER, body="x"
        )
    assert cross.value.status == 401

    with pytest.raises(TwilioRestException) as configured:
        sdk(open_server, ACCOUNT, "a-token-of-my-own").messages.create(
            to=CONTACT, from_=SENDER, body="x"
        )
    assert configured.value.status == 401
    assert sdk(open_server, ACCOUNT, TOKEN).messages.create(to=CONTACT, from_=SENDER, body="ok").sid


@pytest.mark.parametrize(
    ("path_account", "user", "password"),
    [
        ("AC" + "0" * 31, "AC" + "0" * 31, "token"),  # 31 hex digits
        ("AC" + "g" * 32, "AC" + "g" * 32, "token"),  # not hex
        ("MG" + "0" * 32, "MG" + "0" * 32, "token"),  # not an account SID
        ("AC" + "1" * 32, "AC" + "2" * 32, "token"),  # credentials of another account
        ("AC" + "3" * 32, "AC" + "3" * 32, ""),  # no password
    ],
    ids=["short", "not-hex", "not-an-account", "other-user", "empty-password"],
)
def test_malformed_accounts_or_credentials_are_not_learned(
    open_server: EmulatorServer,
    open_emulator: Emulator,
    path_account: str,
    user: str,
    password: str,
) -> None:
    url = f"{open_server.url}/2010-04-01/Accounts/{path_account}/Messages.json"
    response = httpx.post(
        url, data={"To": CONTACT, "From": SENDER, "Body": "oi"}, headers=_basic(user, password)
    )
    assert (response.status_code, response.json()["code"]) == (401, 20003)
    assert httpx.get(url).status_code == 401  # no credentials at all
    assert open_emulator.received() == []


def test_learned_accounts_survive_a_reset(
    open_server: EmulatorServer, open_emulator: Emulator
) -> None:
    account, token = _new_account()
    assert sdk(open_server, account, token).messages.list() == []
    assert httpx.post(f"{open_server.url}/_emulator/reset").status_code == 204
    with pytest.raises(TwilioException, match="HTTP 401"):
        sdk(open_server, account, "new-" + token).messages.list()
    assert sdk(open_server, account, token).messages.list() == []
