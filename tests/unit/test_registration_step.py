"""Where a registration is, as the query API names it, from its read-model row."""

from __future__ import annotations

import pytest

from projections.registrations import step

pytestmark = pytest.mark.unit

NOTHING = {"reservation": "none", "user_state": "none", "membership": False, "invitation": "none"}
DONE = {"reservation": "held", "user_state": "active", "membership": True, "invitation": "issued"}


@pytest.mark.parametrize(
    ("status", "facts", "expected"),
    [
        ("started", NOTHING, "reserve_email"),
        ("started", {**NOTHING, "reservation": "held"}, "create_user"),
        ("started", {**DONE, "membership": False, "invitation": "none"}, "add_membership"),
        ("started", {**DONE, "invitation": "none"}, "issue_invitation"),
        ("started", DONE, "complete"),
        ("completed", DONE, None),
        ("compensating", DONE, "revoke_invitation"),
        ("compensating", {**DONE, "invitation": "revoked"}, "remove_membership"),
        ("compensating", {**DONE, "invitation": "revoked", "membership": False}, "disable_user"),
        ("compensating", {**NOTHING, "reservation": "held", "user_state": "disabled"},
         "release_email"),
        ("compensating", {**NOTHING, "reservation": "released"}, "fail"),
        ("compensating", NOTHING, "fail"),  # never held the address: nothing to release
        ("failed", {**NOTHING, "reservation": "released"}, "add_membership"),
    ],
)  # fmt: skip
def test_the_step_in_progress(status: str, facts: dict[str, object], expected: str) -> None:
    row = {**facts, "status": status, "failed_step": "add_membership"}
    assert step(row) == expected
