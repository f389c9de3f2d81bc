"""What a test can turn on the emulator: how status callbacks arrive, and faults to inject."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

type FaultKind = Literal["rate_limit", "server_error", "slow", "disconnect", "undelivered"]


class CallbackOptions(BaseModel):
    """How the status callbacks of messages created from now on are delivered.

    `delay_s` passes before each status change; `out_of_order` sends a message's callbacks
    last-first once its lifecycle is over; `duplicates` sends each callback that many extra
    times (with the same idempotency token, as a retry would); `read` lets WhatsApp recipients
    read what was delivered.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delay_s: float = Field(default=0.2, ge=0, le=60)
    out_of_order: bool = False
    duplicates: int = Field(default=0, ge=0, le=10)
    read: bool = True


class Fault(BaseModel):
    """What happens to one message-create request (after authentication, before validation).

    * `rate_limit`: 429, code 20429, `Retry-After: retry_after_s`; nothing is created.
    * `server_error`: 500, code 20500; nothing is created.
    * `slow`: the message is created, then the 201 waits `delay_s` (a client timeout leaves the
      sender not knowing whether it was sent: reconcile by listing).
    * `disconnect`: the message is created, then the connection drops mid-answer.
    * `undelivered`: 201 as usual, then the message ends `status` with `error_code`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    delay_s: float = Field(default=0.0, ge=0, le=600)
    retry_after_s: int = Field(default=1, ge=0)
    error_code: int = 63018
    status: Literal["failed", "undelivered"] = "undelivered"


class FaultInjection(Fault):
    """The admin endpoint's body: a fault and how many create requests in a row it hits."""

    count: int = Field(default=1, ge=1, le=10_000)

    def fault(self) -> Fault:
        return Fault.model_validate(self.model_dump(exclude={"count"}))


class Inbound(BaseModel):
    """The inbound admin endpoint's body (see `Emulator.record_inbound`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipient: str = Field(min_length=1)
    sender: str = Field(min_length=1)
    at: AwareDatetime | None = None
    body: str | None = None
