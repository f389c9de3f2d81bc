"""The identity read models as one projection with one position: people, API keys, registrations.

Each module owns its tables and its `apply` (`projections.people`, `projections.api_keys`,
`projections.registrations`); they are projected together because the projector's cost per
event grows with the number of projections, and nearly every event (a message) concerns none
of them: a batch is filtered by event type once, here, before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from events.envelope import EventEnvelope
from projections import api_keys, people, registrations
from projections.batch import ModuleProjection
from projections.database import Conn

NAME: Final = "identity"
TABLES: Final = (*people.TABLES, *api_keys.TABLES, *registrations.TABLES)
TYPES: Final = people.TYPES | api_keys.TYPES | registrations.TYPES


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    if envelope.type in TYPES:
        await people.apply(conn, envelope)
        await api_keys.apply(conn, envelope)
        await registrations.apply(conn, envelope)


async def apply_batch(conn: Conn, envelopes: Sequence[EventEnvelope]) -> None:
    for envelope in envelopes:
        await apply(conn, envelope)


PROJECTION: Final = ModuleProjection(NAME, apply, apply_batch, types=TYPES)
