"""Twilio's error answers: the legacy JSON body, the synchronous codes and the channel failures.

Codes and texts follow Twilio's error dictionary (https://www.twilio.com/docs/errors/<code>).
The synchronous ones are raised as `TwilioError` and answered with the HTTP status Twilio uses;
the asynchronous ones only ever reach a status callback and the message record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

API_VERSION: Final = "2010-04-01"

# What a failed or undelivered message carries as error_message / ChannelStatusMessage.
CHANNEL_ERRORS: Final[Mapping[int, str]] = {
    63016: (
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template."
    ),
    63018: "Rate limit exceeded for Channel",
    63024: "Invalid message recipient",
    63003: "Channel could not find To address",
    63021: "Channel invalid content error",
    63012: "Channel generic error",
    63032: "User's number is part of an experiment",
    30036: "Validity Period Expired",
}


def channel_error_text(code: int) -> str:
    return CHANNEL_ERRORS.get(code, "Channel generic error")


class TwilioError(Exception):
    """A synchronous refusal: answered as `{"code","message","more_info","status"}`."""

    def __init__(
        self, code: int, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def authenticate() -> TwilioError:
    return TwilioError(20003, 401, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})


def not_found(path: str) -> TwilioError:
    return TwilioError(20404, 404, f"The requested resource {path} was not found")


def too_many_requests(retry_after_s: int) -> TwilioError:
    return TwilioError(20429, 429, "Too Many Requests", {"Retry-After": str(retry_after_s)})


def internal_error() -> TwilioError:
    return TwilioError(20500, 500, "An internal server error has occurred")


def invalid_parameter(name: str, value: str) -> TwilioError:
    return TwilioError(20001, 400, f"Invalid {name}: {value}")


def to_required() -> TwilioError:
    return TwilioError(21604, 400, "A 'To' phone number is required.")


def from_required() -> TwilioError:
    return TwilioError(21603, 400, "A 'From' phone number is required.")


def body_required() -> TwilioError:
    return TwilioError(21602, 400, "Message body is required.")


def invalid_to(to: str) -> TwilioError:
    return TwilioError(21211, 400, f"The 'To' number {to} is not a valid phone number.")


def invalid_status_callback(url: str) -> TwilioError:
    return TwilioError(21609, 400, f"Invalid StatusCallback url: {url}")


def body_too_long() -> TwilioError:
    return TwilioError(
        21617, 400, "The concatenated message body exceeds the 1600 character limit."
    )


def unsubscribed() -> TwilioError:
    return TwilioError(21610, 400, "Attempt to send to unsubscribed recipient")
