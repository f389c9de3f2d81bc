"""Users, memberships, credentials and API keys through the tenant book: given, when, then.

Each rejection code is provoked for real, and each command repeated records nothing new.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final
from uuid import UUID

import pytest
from pydantic import ValidationError

from commands.api_keys import CreateApiKey, RevokeApiKey
from commands.memberships import AddMembership, ChangeRole, RemoveMembership
from commands.registration import user_id_of
from commands.tenant_lifecycle import SuspendTenant
from commands.users import (
    ChangePassword,
    CreateUser,
    DisableUser,
    EnableUser,
    IssueInvitation,
    RequestPasswordReset,
    RevokeInvitation,
)
from tests.builders import EPOCH
from tests.identity_world import (
    ARGON,
    World,
    registration_id,
    sha,
    start_registration,
    tenant_id,
)

pytestmark = pytest.mark.unit
T: Final = tenant_id(0)
OTHER_HASH: Final = ARGON.replace("c2FsdHNhbHQ", "b3RoZXJzYWx0")


def member(w: World, index: int, role: str, by: UUID | None = None) -> UUID:
    rid = registration_id(index)
    w.begin(T, start_registration(rid, f"user{index}@example.com", role, by))
    w.run(rid)
    assert w.saga(rid).status == "completed", w.saga(rid)
    return user_id_of(rid)


@pytest.fixture
def w() -> World:
    found = World()
    found.register_tenant(T)
    return found


@pytest.fixture
def owner(w: World) -> UUID:
    return member(w, 0, "owner")


def key(
    key_id: int, scopes: list[str], by: UUID | None = None, key_text: str = "k"
) -> CreateApiKey:
    return CreateApiKey.model_validate({"key_id": UUID(int=key_id), "name": "crm", "by": by,
                                        "key_sha256": sha(key_text), "scopes": scopes})  # fmt: skip


def test_secrets_only_ever_travel_hashed() -> None:
    with pytest.raises(ValidationError):
        ChangePassword(user_id=UUID(int=1), password_hash="hunter2")
    with pytest.raises(ValidationError):
        key(1, ["read"]).model_validate({**key(1, ["read"]).model_dump(), "key_sha256": "zk_1"})
    with pytest.raises(ValidationError):
        key(1, ["read", "read"])


def test_the_last_owner_cannot_be_removed_demoted_or_disabled(w: World, owner: UUID) -> None:
    assert w.outcome(T, RemoveMembership(user_id=owner)) == ["rejected:last_owner"]
    assert w.outcome(T, ChangeRole(user_id=owner, role="admin")) == ["rejected:last_owner"]
    assert w.outcome(T, DisableUser(user_id=owner)) == ["rejected:last_owner"]
    second = member(w, 1, "owner", by=owner)
    assert w.outcome(T, ChangeRole(user_id=owner, role="admin", by=second)) == [
        "MembershipRoleChanged"
    ]
    assert w.outcome(T, ChangeRole(user_id=owner, role="admin", by=second)) == []


def test_nobody_grants_or_touches_a_role_above_their_own(w: World, owner: UUID) -> None:
    admin = member(w, 1, "admin", by=owner)
    operator = member(w, 2, "operator", by=admin)
    rid = registration_id(3)
    assert w.outcome(T, start_registration(rid, "x@example.com", "owner", admin)) == [
        "rejected:role_not_allowed"
    ]
    assert w.outcome(T, start_registration(rid, "x@example.com", "viewer", operator)) == [
        "rejected:role_not_allowed"
    ]
    assert w.outcome(T, DisableUser(user_id=owner, by=admin)) == ["rejected:role_not_allowed"]
    assert w.outcome(T, ChangeRole(user_id=admin, role="owner", by=admin)) == [
        "rejected:role_not_allowed"
    ]
    assert w.outcome(T, DisableUser(user_id=operator, by=admin)) == ["UserDisabled"]
    assert w.outcome(T, DisableUser(user_id=operator, by=admin)) == []
    assert w.outcome(T, EnableUser(user_id=operator, by=admin)) == ["UserEnabled"]
    assert w.outcome(T, EnableUser(user_id=operator, by=admin)) == []


def test_memberships_are_added_once_and_changed_through_their_role(w: World, owner: UUID) -> None:
    admin = member(w, 1, "admin", by=owner)
    assert w.outcome(T, AddMembership(user_id=admin, role="admin")) == []
    assert w.outcome(T, AddMembership(user_id=admin, role="viewer")) == [
        "rejected:membership_exists"
    ]
    assert w.outcome(T, RemoveMembership(user_id=admin, by=owner)) == ["MembershipRemoved"]
    assert w.outcome(T, RemoveMembership(user_id=admin, by=owner)) == []
    assert w.outcome(T, ChangeRole(user_id=admin, role="viewer")) == ["rejected:unknown_membership"]
    assert w.outcome(T, AddMembership(user_id=UUID(int=9), role="viewer")) == [
        "rejected:unknown_user"
    ]
    assert w.outcome(T, AddMembership(user_id=admin, role="viewer", by=owner)) == [
        "MembershipAdded"
    ]


def test_a_suspended_tenant_grants_nothing_but_can_still_take_access_away(
    w: World, owner: UUID
) -> None:
    admin = member(w, 1, "admin", by=owner)
    w.submit(T, key(1, ["read"]))
    w.submit(T, SuspendTenant(reason="unpaid"))
    rid = registration_id(5)
    assert w.outcome(T, start_registration(rid, "x@example.com", "viewer")) == [
        "rejected:tenant_suspended"
    ]
    assert w.outcome(T, key(2, ["read"])) == ["rejected:tenant_suspended"]
    assert w.outcome(T, ChangeRole(user_id=admin, role="viewer")) == ["rejected:tenant_suspended"]
    assert w.outcome(T, RevokeApiKey(key_id=UUID(int=1))) == ["ApiKeyRevoked"]
    assert w.outcome(T, DisableUser(user_id=admin)) == ["UserDisabled"]
    assert w.outcome(T, EnableUser(user_id=admin)) == ["rejected:tenant_suspended"]


def test_users_come_only_from_their_own_open_registration(w: World, owner: UUID) -> None:
    rid = registration_id(0)
    again = CreateUser(user_id=owner, email="user0@example.com", registration_id=rid)
    assert w.outcome(T, again) == []
    other = registration_id(7)
    assert w.outcome(T, again.model_copy(update={"registration_id": other})) == [
        "rejected:user_exists"
    ]
    stranger = CreateUser(user_id=UUID(int=5), email="s@example.com", registration_id=other)
    assert w.outcome(T, stranger) == ["rejected:unknown_registration"]
    w.submit(T, start_registration(other, "s@example.com", "viewer"))
    assert w.outcome(T, stranger) == ["rejected:registration_mismatch"]


def test_invitations_are_issued_once_and_a_revoked_one_never_returns(w: World, owner: UUID) -> None:
    expires = EPOCH + timedelta(days=3)
    invite = IssueInvitation(invitation_id=UUID(int=1), user_id=owner, token_sha256=sha("t"),
                             expires_at=expires)  # fmt: skip
    assert w.outcome(T, invite) == ["InvitationIssued"]
    assert w.outcome(T, invite) == []
    assert w.outcome(T, invite.model_copy(update={"token_sha256": sha("u")})) == [
        "rejected:invitation_exists"
    ]
    revoke = RevokeInvitation(invitation_id=UUID(int=1), user_id=owner)
    assert w.outcome(T, revoke) == ["InvitationRevoked"]
    assert w.outcome(T, revoke) == []
    assert w.outcome(T, invite) == ["rejected:invitation_revoked"]
    assert w.outcome(T, revoke.model_copy(update={"invitation_id": UUID(int=2)})) == [
        "rejected:unknown_invitation"
    ]


def test_a_password_changes_through_a_live_reset_token_only(w: World, owner: UUID) -> None:
    reset = RequestPasswordReset(user_id=owner, token_sha256=sha("r"),
                                 expires_at=w.now + timedelta(seconds=5))  # fmt: skip
    assert w.outcome(T, reset) == ["PasswordResetRequested"]
    assert w.outcome(T, reset) == []
    wrong = ChangePassword(user_id=owner, password_hash=OTHER_HASH, reset_token_sha256=sha("x"))
    assert w.outcome(T, wrong) == ["rejected:invalid_reset_token"]
    right = wrong.model_copy(update={"reset_token_sha256": sha("r")})
    assert w.outcome(T, right) == ["PasswordChanged"]
    assert w.outcome(T, right) == []  # the same password again: nothing happens
    assert w.outcome(T, ChangePassword(user_id=owner, password_hash=ARGON)) == ["PasswordChanged"]
    w.submit(T, reset.model_copy(update={"token_sha256": sha("s")}))
    for _ in range(5):  # each command advances the world's clock by a second
        w.submit(T, SuspendTenant(reason="tick"))
    late = wrong.model_copy(update={"reset_token_sha256": sha("s")})
    assert w.outcome(T, late) == ["rejected:reset_token_expired"]


def test_an_invitation_sets_the_first_password_once_and_only_with_its_token(w: World) -> None:
    rid = registration_id(7)
    invited = start_registration(rid, "new@example.com", "operator").model_copy(
        update={"password_hash": None}
    )
    w.begin(T, invited)
    w.run(rid)
    user = user_id_of(rid)
    accept = ChangePassword(user_id=user, password_hash=OTHER_HASH,
                            invitation_token_sha256=sha("wrong"))  # fmt: skip
    assert w.outcome(T, accept) == ["rejected:invalid_invitation"]
    right = accept.model_copy(update={"invitation_token_sha256": sha(f"invite-{rid}")})
    assert w.outcome(T, right) == ["PasswordChanged"]
    again = right.model_copy(update={"password_hash": ARGON})
    assert w.outcome(T, again) == ["rejected:invitation_used"]
    both = again.model_copy(update={"reset_token_sha256": sha("r")})
    assert w.outcome(T, both) == ["rejected:invitation_used"]


def test_an_expired_or_revoked_invitation_sets_no_password(w: World, owner: UUID) -> None:
    rid = registration_id(8)
    invited = start_registration(rid, "late@example.com", "viewer").model_copy(
        update={"password_hash": None, "invitation_expires_at": w.now + timedelta(seconds=200)}
    )
    w.begin(T, invited)
    w.run(rid)
    user = user_id_of(rid)
    accept = ChangePassword(user_id=user, password_hash=OTHER_HASH,
                            invitation_token_sha256=sha(f"invite-{rid}"))  # fmt: skip
    for _ in range(200):  # each command advances the world's clock by a second
        w.submit(T, SuspendTenant(reason="tick"))
    assert w.outcome(T, accept) == ["rejected:invitation_expired"]
    invitation = next(iter(i for i, v in w.book(T).identity.invitations.items()
                           if v.user_id == user))  # fmt: skip
    w.submit(T, RevokeInvitation(invitation_id=invitation, user_id=user, by=owner))
    assert w.outcome(T, accept) == ["rejected:invalid_invitation"]


def test_a_disabled_user_gets_no_credentials(w: World, owner: UUID) -> None:
    viewer = member(w, 1, "viewer", by=owner)
    w.submit(T, DisableUser(user_id=viewer, by=owner))
    reset = RequestPasswordReset(user_id=viewer, token_sha256=sha("r"), expires_at=w.now)
    assert w.outcome(T, reset) == ["rejected:user_disabled"]
    assert w.outcome(T, ChangePassword(user_id=viewer, password_hash=OTHER_HASH)) == [
        "rejected:user_disabled"
    ]
    assert w.outcome(T, DisableUser(user_id=UUID(int=3))) == ["rejected:unknown_user"]


def test_api_keys_carry_no_more_than_their_creator_and_stay_revoked(w: World, owner: UUID) -> None:
    viewer = member(w, 1, "viewer", by=owner)
    assert w.outcome(T, key(1, ["read", "admin"], by=viewer)) == ["rejected:role_not_allowed"]
    assert w.outcome(T, key(1, ["read"], by=viewer)) == ["ApiKeyCreated"]
    assert w.outcome(T, key(1, ["read"], by=viewer)) == []
    assert w.outcome(T, key(1, ["read"], key_text="other")) == ["rejected:key_exists"]
    assert w.outcome(T, RevokeApiKey(key_id=UUID(int=1), by=viewer)) == [
        "rejected:role_not_allowed"
    ]
    assert w.outcome(T, RevokeApiKey(key_id=UUID(int=1), by=owner)) == ["ApiKeyRevoked"]
    assert w.outcome(T, RevokeApiKey(key_id=UUID(int=1), by=owner)) == []
    assert w.outcome(T, key(1, ["read"], by=viewer)) == ["rejected:key_revoked"]
    assert w.outcome(T, RevokeApiKey(key_id=UUID(int=2))) == ["rejected:unknown_key"]


def test_identity_commands_need_a_registered_tenant() -> None:
    w = World()
    assert w.outcome(T, key(1, ["read"])) == ["rejected:unknown_tenant"]
    assert w.outcome(T, DisableUser(user_id=UUID(int=1))) == ["rejected:unknown_tenant"]
