"""No secret leaves the moment it was handed out: not into logs, not onto the log, not into any
later answer (issue #6).

One tenant goes through every path that makes or takes a secret — its Twilio auth token and
registration key, a scoped API key, an invitation accepted with a password, a password reset,
a login, a refresh — with the decider, projector and registration runner running in this
process, so their logs are captured too (every logger, at DEBUG). Then every captured log line,
every record on `zapflow.commands` and `zapflow.events` (raw bytes) and the answers of every
read route are searched for each secret. The log must hold the hashes and the ciphertext
instead, which proves the search looked in the right place.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Final

import pytest

from tests.integration.test_people_api import People, call, log_bytes, members, registration_of
from tests.integration.test_people_api import people as people  # the fixture

pytestmark = pytest.mark.integration
PASSWORD: Final = "first password of Ana"
NEW_PASSWORD: Final = "second password of Ana"


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def test_no_secret_reaches_logs_events_or_later_answers(
    people: People, fresh_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client, a, _ = people
    secrets = {"registration key": a.api_key, "twilio auth token": a.tenant.token,
               "password": PASSWORD, "new password": NEW_PASSWORD}  # fmt: skip

    made = await call(client, "POST", "/v1/api-keys", a,
                      json={"name": "crm", "scopes": ["read", "operate"]})  # fmt: skip
    assert made.status_code == 201, made.text
    secrets["scoped key"] = made.json()["key"]

    invited = await call(client, "POST", "/v1/users", a,
                         json={"email": "ana@example.com", "role": "admin"})  # fmt: skip
    assert invited.status_code == 202, invited.text
    secrets["invitation token"] = invited.json()["invitation_token"]
    assert (await registration_of(client, a, invited.headers["location"]))["status"] == "completed"
    accepted = await call(
        client,
        "POST",
        "/v1/auth/invitations/accept",
        a,
        json={
            "email": "ana@example.com",
            "token": secrets["invitation token"],
            "password": PASSWORD,
        },
    )
    assert accepted.status_code == 200, accepted.text
    secrets["first access token"] = accepted.json()["access_token"]
    secrets["first refresh token"] = accepted.json()["refresh_token"]

    user = invited.json()["user_id"]
    reset = await call(client, "POST", f"/v1/users/{user}/password-reset", a)
    assert reset.status_code == 200, reset.text
    secrets["reset token"] = reset.json()["reset_token"]
    confirmed = await call(
        client,
        "POST",
        "/v1/auth/password-reset/confirm",
        a,
        json={
            "email": "ana@example.com",
            "token": secrets["reset token"],
            "password": NEW_PASSWORD,
        },
    )
    assert confirmed.status_code == 200, confirmed.text
    session = await call(client, "POST", "/v1/auth/login", a,
                         json={"email": "ana@example.com", "password": NEW_PASSWORD})  # fmt: skip
    assert session.status_code == 200, session.text
    secrets["access token"] = session.json()["access_token"]
    renewed = await call(client, "POST", "/v1/auth/refresh", a,
                         json={"refresh_token": session.json()["refresh_token"]})  # fmt: skip
    assert renewed.status_code == 200, renewed.text
    secrets["refresh token"] = session.json()["refresh_token"]

    answers = []
    for who in (a, secrets["scoped key"], secrets["access token"]):
        for path in ("/v1/me", "/v1/conversations", "/v1/api-keys", "/v1/users",
                     invited.headers["location"]):  # fmt: skip
            reply = await call(client, "GET", path, who)
            assert reply.status_code in (200, 403), (path, reply.text)
            answers.append(reply.text)
    assert "ana@example.com" in await members(client, a)

    on_the_log = (await log_bytes(fresh_broker)).decode("utf-8", "replace")
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for name, secret in secrets.items():
        assert secret not in logs, f"the {name} is in the logs"
        assert secret not in on_the_log, f"the {name} is on the log"
        for answer in answers:
            assert secret not in answer, f"the {name} is in a later answer"
    # The log holds what stands for them: hashes, argon2id, ciphertext.
    for name in ("registration key", "scoped key", "invitation token", "reset token"):
        assert _sha(secrets[name]) in on_the_log, name
    assert on_the_log.count("$argon2id$") >= 2
    assert '"twilio_auth_token_encrypted":"v1.' in on_the_log.replace(" ", "")
    assert len(caplog.records) > 20  # the platform did log, and was searched
