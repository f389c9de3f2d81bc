"""Applies the SQL migrations in `schemas/sql/` once each, in order, safely from many processes.

A migration is `NNNN_name.sql`. Each runs in its own transaction together with its row in
`zapflow_migrations`; an advisory lock serialises concurrent runners; a migration edited after
it was applied is an error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from projections.database import Conn

SQL_DIR: Final = Path(__file__).resolve().parent.parent / "schemas" / "sql"
_NAME: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY: Final = 0x7A6170666C6F77  # "zapflow"

_BOOKKEEPING: Final = """
CREATE TABLE IF NOT EXISTS zapflow_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(path.stem, path))
    return found


async def applied(conn: Conn) -> dict[str, str]:
    """version → checksum of what the database has applied (empty before the first run)."""
    exists = await conn.fetchval("SELECT to_regclass('zapflow_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM zapflow_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def pending(conn: Conn, sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Migrations not yet applied; raises when an applied one was edited since."""
    done = await applied(conn)
    todo = []
    for migration in discover(sql_dir):
        checksum = done.get(migration.version)
        if checksum is None:
            todo.append(migration)
        elif checksum != migration.checksum:
            raise MigrationError(f"{migration.path.name} was edited after it was applied")
    return todo


async def migrate(conn: Conn, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration; returns the versions applied by this call."""
    newly = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
    for migration in discover(sql_dir):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            if migration in await pending(conn, sql_dir):
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO zapflow_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
                newly.append(migration.version)
    return newly
