"""`Emulator`: the emulator's memory and its Python API, safe to call from any thread.

It holds the accounts (configured, or in open-accounts mode also learned from the first request
of a well-formed unknown account SID), every message created, what was received, the last inbound
message of each (recipient, sender) pair (the WhatsApp 24-hour window), SMS opt-outs, the
queue of injected faults, the callback options and the log of callbacks sent. The HTTP routes
and the test thread share one instance; one lock guards it, held only for dictionary work.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from emulator import twilio_errors
from emulator.callbacks import Attempt
from emulator.controls import CallbackOptions, Fault
from emulator.message import Message, Received, Transition
from emulator.outbound import Outbound

type Clock = Callable[[], datetime]

ACCOUNT_SID: Final = re.compile(r"AC[0-9a-fA-F]{32}")
WINDOW: Final = timedelta(hours=24)
OPT_OUT_WORDS: Final = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_WORDS: Final = frozenset({"START", "YES", "UNSTOP"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def _basic_credentials(authorization: str | None) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded, validate=True).partition(b":")
    except binascii.Error:
        return None
    return (user, password) if colon else None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message just created: its 201 body and what its lifecycle needs to run."""

    resource: dict[str, object]
    sid: str
    generation: int
    in_window: bool
    options: CallbackOptions
    auth_token: str = field(repr=False)


class Emulator:
    """The emulator's state for `accounts` (AccountSid → AuthToken).

    With `open_accounts`, any well-formed account SID (`AC` + 32 hex digits) is served: the
    first request of an unknown one that carries Basic `AccountSid:password` makes that password
    the account's auth token, which every later request must present and which signs its status
    callbacks, as for a configured account. `zapflow up` runs it so, since it cannot know the
    tenants' accounts in advance.
    """

    def __init__(
        self,
        accounts: Mapping[str, str],
        *,
        clock: Clock = utc_now,
        callbacks: CallbackOptions | None = None,
        open_accounts: bool = False,
    ) -> None:
        for sid, token in accounts.items():
            if ACCOUNT_SID.fullmatch(sid) is None or not token:
                raise ValueError(f"not an account SID with an auth token: {sid!r}")
        self._accounts = dict(accounts)
        self._open_accounts = open_accounts
        self._clock = clock
        self._initial_options = callbacks or CallbackOptions()
        self._lock = threading.Lock()
        self._generation = 0
        self._messages: dict[str, Message] = {}
        self._received: list[Received] = []
        self._last_inbound: dict[tuple[str, str], datetime] = {}
        self._opted_out: set[tuple[str, str]] = set()
        self._faults: deque[Fault] = deque()
        self._options = self._initial_options
        self._callback_log: list[Attempt] = []

    @property
    def open_accounts(self) -> bool:
        return self._open_accounts

    def now(self) -> datetime:
        return self._clock().replace(microsecond=0)

    # -- the Python API (the admin endpoints call these too) ------------------------------------

    def record_inbound(
        self, recipient: str, sender: str, at: datetime | None = None, body: str | None = None
    ) -> None:
        """`recipient` wrote `body` to `sender` at `at` (default now): the 24-hour window opens.

        On SMS, a one-word opt-out (STOP, …) blocks the pair and an opt-in word (START, …)
        unblocks it, as Twilio's built-in filtering does; WhatsApp has no such filtering.
        """
        if at is not None and at.utcoffset() is None:
            raise ValueError("`at` must carry a time zone")
        pair = (recipient, sender)
        word = (body or "").strip().upper()
        with self._lock:
            moment = self.now() if at is None else at
            last = self._last_inbound.get(pair)
            if last is None or moment > last:
                self._last_inbound[pair] = moment
            if not recipient.startswith("whatsapp:"):
                if word in OPT_OUT_WORDS:
                    self._opted_out.add(pair)
                elif word in OPT_IN_WORDS:
                    self._opted_out.discard(pair)

    def inject(self, fault: Fault, count: int = 1) -> None:
        """The next `count` message-create requests meet `fault` (after those already queued)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.extend([fault] * count)

    def configure_callbacks(self, options: CallbackOptions) -> None:
        """Options for the callbacks of messages created from now on."""
        with self._lock:
            self._options = options

    @property
    def callback_options(self) -> CallbackOptions:
        with self._lock:
            return self._options

    def received(self) -> list[dict[str, Any]]:
        """Every accepted create request, oldest first."""
        with self._lock:
            return [entry.as_json() for entry in self._received]

    def callbacks(self) -> list[dict[str, Any]]:
        """Every callback POST attempted, in the order they were made."""
        with self._lock:
            return [attempt.as_json() for attempt in self._callback_log]

    def rotate_auth_token(self, account_sid: str, token: str) -> None:
        """`token` is the account's auth token from now on, as when a secondary token is
        promoted at Twilio: the old one is refused at once, and callbacks of messages created
        from now on are signed with the new one."""
        if not token:
            raise ValueError("an auth token is not empty")
        with self._lock:
            if account_sid not in self._accounts:
                raise KeyError(account_sid)
            self._accounts[account_sid] = token

    def reset(self) -> None:
        """Forget messages, windows, opt-outs, faults and callbacks; lifecycles underway stop.

        Accounts stay, those learned in open-accounts mode included.
        """
        with self._lock:
            self._generation += 1
            self._messages.clear()
            self._received.clear()
            self._last_inbound.clear()
            self._opted_out.clear()
            self._faults.clear()
            self._options = self._initial_options
            self._callback_log.clear()

    # -- what the REST routes and the lifecycles use -------------------------------------------

    def authenticate(self, account_sid: str, authorization: str | None) -> None:
        """Basic `AccountSid:AuthToken` of a known account, and the same account's path.

        In open-accounts mode an unknown, well-formed `account_sid` presented with its own SID
        as the user and a non-empty password becomes known, with that password as its token.
        """
        credentials = _basic_credentials(authorization)
        if credentials is None:
            raise twilio_errors.authenticate()
        user, password = credentials
        with self._lock:
            token = self._accounts.get(account_sid)
            if token is None and self._may_open(account_sid, user, password):
                token = self._accounts[account_sid] = password.decode()
        if token is None:
            raise twilio_errors.authenticate()
        user_ok = hmac.compare_digest(user, account_sid.encode())
        if not (hmac.compare_digest(password, token.encode()) and user_ok):
            raise twilio_errors.authenticate()

    def _may_open(self, account_sid: str, user: bytes, password: bytes) -> bool:
        """An unknown account that open-accounts mode learns from these credentials."""
        well_formed = ACCOUNT_SID.fullmatch(account_sid) is not None
        if not (self._open_accounts and well_formed and password and user == account_sid.encode()):
            return False
        try:
            password.decode()
        except UnicodeDecodeError:
            return False
        return True

    def take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def accept(
        self,
        account_sid: str,
        outbound: Outbound,
        form: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> Accepted:
        """Create the message (or refuse an opted-out SMS pair with 21610)."""
        with self._lock:
            now = self.now()
            pair = (outbound.to, outbound.from_ or "")
            if not outbound.whatsapp and pair in self._opted_out:
                raise twilio_errors.unsubscribed()
            sid = "SM" + secrets.token_hex(16)
            message = Message(
                sid=sid,
                account_sid=account_sid,
                to=outbound.to,
                from_=outbound.from_,
                messaging_service_sid=outbound.messaging_service_sid,
                body=outbound.body or "",
                num_media=len(outbound.media_urls),
                num_segments=outbound.num_segments(),
                status="accepted" if outbound.messaging_service_sid else "queued",
                date_created=now,
                date_updated=now,
            )
            self._messages[sid] = message
            params: dict[str, list[str]] = {}
            for name, value in form:
                params.setdefault(name, []).append(value)
            kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            self._received.append(Received(sid, account_sid, params, kept, now))
            return Accepted(
                resource=message.resource(),
                sid=sid,
                generation=self._generation,
                in_window=self._in_window(outbound, now),
                options=self._options,
                auth_token=self._accounts[account_sid],
            )

    def _in_window(self, outbound: Outbound, now: datetime) -> bool:
        if outbound.from_ is not None:
            last = self._last_inbound.get((outbound.to, outbound.from_))
        else:  # a Messaging Service picks the sender: any of them will do
            moments = [at for (to, _), at in self._last_inbound.items() if to == outbound.to]
            last = max(moments, default=None)
        return last is not None and now - last <= WINDOW

    def advance(self, sid: str, generation: int, transition: Transition) -> Message | None:
        """Move a message on; a copy of it after the move, or None if a reset forgot it."""
        with self._lock:
            message = self._messages.get(sid)
            if message is None or generation != self._generation:
                return None
            now = self.now()
            message.status = transition.status
            message.date_updated = now
            if transition.status == "sent":
                message.date_sent = now
            if transition.error_code is not None:
                message.error_code = transition.error_code
                message.error_message = twilio_errors.channel_error_text(transition.error_code)
            return replace(message)

    def log_callbacks(self, generation: int, attempts: Sequence[Attempt]) -> None:
        with self._lock:
            if generation == self._generation:
                self._callback_log.extend(attempts)

    def messages(self, account_sid: str) -> list[Message]:
        """Copies of the account's messages, newest first (the list resource's order)."""
        with self._lock:
            found = [m for m in self._messages.values() if m.account_sid == account_sid]
            return [replace(m) for m in reversed(found)]

    def message(self, account_sid: str, sid: str) -> Message | None:
        with self._lock:
            message = self._messages.get(sid)
            if message is None or message.account_sid != account_sid:
                return None
            return replace(message)
