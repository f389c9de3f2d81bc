"""`GET /v1/me`: who is calling, as the API sees it (any credential with `read`)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api import admin_commands as admin
from api.auth import PERMISSIONS, Kind, Permission, Reader
from events.identity import Role

router = APIRouter(prefix="/v1", tags=["people and keys"])


class Me(BaseModel):
    tenant_id: UUID
    kind: Kind = Field(description="`user` (access token), `api_key` (scoped key) or "
                       "`tenant_key` (the tenant's registration key).")  # fmt: skip
    subject: UUID = Field(description="The user id, the key id, or the tenant id.")
    role: Role | None = Field(description="The user's current role; null for keys.")
    permissions: list[Permission]


@router.get("/me", summary="Who is calling: tenant, kind, subject, role, permissions",
            responses=admin.responses())  # fmt: skip
async def me(principal: Reader) -> Me:
    return Me(
        tenant_id=principal.tenant_id, kind=principal.kind, subject=principal.subject,
        role=principal.role, permissions=[p for p in PERMISSIONS if p in principal.permissions],
    )  # fmt: skip
