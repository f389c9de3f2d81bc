"""The outbound policy: a pure function evaluated before every send, bot's or human's."""

from __future__ import annotations

from datetime import datetime

from commands.errors import Rejected
from events.conversation import Author, State


def check_send(
    *,
    author: Author,
    state: State,
    opted_out: bool,
    window_open_until: datetime | None,
    now: datetime,
    is_template: bool,
) -> None:
    """Raise `Rejected` unless this send is allowed right now."""
    if opted_out:
        raise Rejected("contact_opted_out", "the contact opted out; nothing may be sent")
    if state == "closed":
        raise Rejected("conversation_closed", "the conversation is closed")
    if author == "bot" and state != "bot":
        raise Rejected("not_owned_by_bot", f"the bot may not send while the state is {state}")
    if author == "human" and state != "human":
        raise Rejected("not_owned_by_human", "an operator must take the conversation over first")
    window_open = window_open_until is not None and now < window_open_until
    if not window_open and not is_template:
        raise Rejected(
            "outside_service_window",
            "the 24-hour window is closed: only an approved template (content_sid) may be sent",
        )
