"""Delivery status ordering: a status only moves forward; failed and undelivered are terminal."""

from __future__ import annotations

from typing import Final

from events.conversation import Status

_RANK: Final[dict[Status, int]] = {
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "read": 4,
}
_TERMINAL: Final[frozenset[Status]] = frozenset({"failed", "undelivered"})
# Twilio statuses outside our model, mapped onto it.
_ALIASES: Final[dict[str, Status]] = {
    "accepted": "queued",
    "scheduled": "queued",
    "canceled": "failed",
    "partially_delivered": "delivered",
}


def normalise(raw: str) -> Status | None:
    """Our status for Twilio's `MessageStatus`, or None for one that is not an outbound status."""
    lowered = raw.strip().lower()
    if lowered in _RANK or lowered in _TERMINAL:
        return lowered
    return _ALIASES.get(lowered)


def advance(current: Status | None, raw: str) -> Status | None:
    """The new status if `raw` moves `current` forward, else None (duplicate or regression)."""
    new = normalise(raw)
    if new is None or new == current:
        return None
    if current is None:
        return new
    if current in _TERMINAL:
        return None
    if new in _TERMINAL:
        # A message already delivered or read cannot fail afterwards; an earlier one can.
        return new if _RANK[current] < _RANK["delivered"] else None
    return new if _RANK[new] > _RANK[current] else None
