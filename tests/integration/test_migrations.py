"""SQL migrations: applied once each, in order, concurrently safe, edits after the fact refused."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from projections.database import connect
from projections.migrations import SQL_DIR, MigrationError, discover, migrate, pending

pytestmark = pytest.mark.integration


async def test_migrate_applies_everything_once(db: asyncpg.Connection) -> None:
    versions = [m.version for m in discover()]
    assert versions
    assert await pending(db) == discover()
    assert await migrate(db) == versions
    assert await migrate(db) == []
    assert await pending(db) == []
    assert await db.fetchval("SELECT to_regclass('projection_checkpoints') IS NOT NULL")


async def test_concurrent_runners_apply_each_migration_exactly_once(database_url: str) -> None:
    conns = [await connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    applied = [version for result in results for version in result]
    assert sorted(applied) == [m.version for m in discover()]


async def test_an_applied_migration_edited_later_is_refused(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    await migrate(db, sql_dir)
    first = sorted(sql_dir.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=f"{first.name} was edited after it was applied"):
        await pending(db, sql_dir)


async def test_a_failing_migration_leaves_no_trace(db: asyncpg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    (sql_dir / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1/0;\n")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(db, sql_dir)
    assert await db.fetchval("SELECT to_regclass('half_done')") is None
    assert [m.version for m in await pending(db, sql_dir)] == ["9999_broken"]
