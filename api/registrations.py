"""`GET /v1/registrations/{id}`: where a registration of the API key's tenant is (ADR 0018).

Read from the registrations read model under row-level security, like every query route
(ADR 0011): another tenant's registration answers 404 exactly like one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.auth import AdminTenant
from api.container import Container
from api.errors import ApiError, ErrorBody
from projections import read
from projections.registrations import registration

router = APIRouter(prefix="/v1", tags=["identity"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, malformed or unknown API key."},
    404: {"model": ErrorBody, "description": "No such registration for this tenant."},
}


class RegistrationOut(BaseModel):
    registration_id: UUID
    email: str
    role: Literal["owner", "admin", "operator", "viewer"] | None = Field(
        description="Null for a moment: its start is still being projected."
    )
    user_id: UUID
    status: Literal["started", "compensating", "completed", "failed"]
    step: str | None = Field(
        description="What it waits for: a forward step (reserve_email, create_user, "
        "add_membership, issue_invitation, complete), an undoing step while compensating "
        "(revoke_invitation, remove_membership, disable_user, release_email, fail), the step "
        "that failed once failed; null once completed."
    )
    failed_step: str | None
    reason: str | None = Field(description="Why it failed (e.g. `email_taken: …`, a timeout).")
    started_at: datetime | None
    updated_at: datetime
    ended_at: datetime | None


@router.get(
    "/registrations/{registration_id}",
    summary="Where a registration is: started (at which step), compensating, completed, failed",
    responses=_RESPONSES,
)
async def get_registration(
    request: Request, tenant: AdminTenant, registration_id: str
) -> RegistrationOut:
    try:
        rid = UUID(registration_id)
    except ValueError:
        raise ApiError(404, "not_found", "no such registration") from None
    container: Container = request.app.state.container
    async with read.tenant_scope(container.reader, tenant) as conn:
        found = await registration(conn, tenant, rid)
    if found is None:
        raise ApiError(404, "not_found", "no such registration")
    return RegistrationOut.model_validate(found, from_attributes=True)
