"""The schema: numbered migrations applied once, then every function definition re-applied.

Migrations (server/db/migrations/NNNN_name.sql) hold tables, constraints and data; each is applied
once, in order, and an applied file that was edited is refused (checksums). Functions
(server/db/functions/*.sql, `CREATE OR REPLACE` only) are re-applied by every run, so a function is
edited in place and its history is its file's. A function whose arguments or result change needs
a migration that drops the old one first. A run is one transaction under a PostgreSQL advisory
lock: replicas starting together are safe, and a run that fails changes nothing.

The function files carry a version (FUNCTIONS_RELEASES: each version with the checksum it stands
for; a test fails when the files change and no version is added). The database records the
version it last got, and a server whose version is lower, or that lacks an applied migration,
leaves the functions alone: in a rolling deploy an old replica that restarts must not put back
older definitions.

The first release squashed six earlier migrations into 0001_baseline.sql; a database they built
(recognized by their names and checksums) is recorded as having the baseline.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FUNCTIONS_DIR = Path(__file__).parent / "functions"
# Any constant works; it only has to be the same for every replica of this service.
_ADVISORY_LOCK_KEY = 0x5E11D_C4A7
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# What 0001_baseline.sql replaced: a database with exactly these applied has the baseline's schema.
SQUASHED_INTO_BASELINE = {
    "0001_users.sql": "7fae0bc326dac0ed80bc738dae71bade41fe9936d71ebb8e849e5006093f228a",
    "0002_ledger.sql": "a303b4377fdab3a701a5f104ed4212d20b6e261e76a8ac6537954714208ba311",
    "0003_chat.sql": "edfc98227bb3970b83f292761c9b32ee87019306708d29e2b95021eeb3a9235a",
    "0004_ended_sessions.sql": "fc7461b56c66d879c26860cdd8367ec0211917ebf41e808d5a77e7d41fd7c980",
    "0005_room_list_snapshots.sql": "b5a9df0592fc213f45f6d9f7aa529a24eb549023ed16495ed522c1e99a3609be",
    "0006_chat_presence.sql": "5cc8c7145ec4e89ea5797e6309055a8757b4fafb48136aec7ec29fa64e3e85fa",
}
# Every release of the files in functions/: its version and their checksum. A change to a file
# adds a version (never edits one): a server leaves alone functions of a version above its own.
FUNCTIONS_RELEASES = {
    1: "ef295918ba1704c6550433f1747a8bd1c27447b430d691e478140fd7ea3fe177",
    2: "2667f25cacb6bc64009eb24a52b147cabcdd59e5581a4b43189087338077a140",
    3: "322540a972d612a3a7308e6b5a9567328013af6b273984f21e65a2fbb9592967",
    4: "03268ed1bb38080fde0ddfc775f0448f6c2fdfda6c990a129bfe9ead8ee73c77",
    5: "b435f0fd75b9142a46300993d6622d3ebbf827a14269305185a0b5a7aa82601a",
    6: "4135ea980ff7ba2d6cf9f55a4cc767346f2722102968b961500ffe99495d3558",
    7: "b5af827e14cf301fdb685c5475b748ad94bbc288ee3da9abff32eaaf769567bc",
}
FUNCTIONS_VERSION = max(FUNCTIONS_RELEASES)
FUNCTIONS_CHECKSUM = FUNCTIONS_RELEASES[FUNCTIONS_VERSION]

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
_CREATE_FUNCTIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_functions (
    version    integer NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

log = logging.getLogger(__name__)


class MigrationError(Exception):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, to notice an applied file being edited."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of `directory`, ordered by version."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path.name}")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def load_functions(directory: Path = FUNCTIONS_DIR) -> list[tuple[str, str]]:
    """(file name, SQL) of every function file, in name order."""
    return [(path.name, path.read_text()) for path in sorted(directory.glob("*.sql"))]


def functions_checksum(functions: list[tuple[str, str]] | None = None) -> str:
    """SHA-256 over the function files' names and texts."""
    digest = hashlib.sha256()
    for name, sql in load_functions() if functions is None else functions:
        digest.update(name.encode() + b"\0" + sql.encode() + b"\0")
    return digest.hexdigest()


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply the pending migrations and re-apply the functions; return the migrations applied."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(_CREATE_TABLE)
            applied = await _applied(conn, migrations)
            for migration in migrations:
                if migration.version in applied:
                    name, checksum = applied[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(f"migration {name} was changed after it was applied")
                    continue
                await conn.execute(migration.sql)
                await conn.execute(_RECORD, migration.version, migration.name, migration.checksum)
                log.info("applied migration %s", migration.name)
                applied_now.append(migration.name)
            newer = sorted(set(applied) - {m.version for m in migrations})
            if newer:
                log.warning(
                    "the database has migrations this server lacks (%s): functions left as they are", newer
                )
            else:
                await _apply_functions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now


async def _apply_functions(conn: asyncpg.Connection) -> None:
    await conn.execute(_CREATE_FUNCTIONS_TABLE)
    recorded = await conn.fetchval("SELECT max(version) FROM schema_functions")
    if recorded is not None and recorded > FUNCTIONS_VERSION:
        log.warning(
            "the database has functions version %s, this server %s: functions left as they are",
            recorded,
            FUNCTIONS_VERSION,
        )
        return
    for name, sql in load_functions():
        await conn.execute(sql)
        log.debug("applied functions %s", name)
    await conn.execute("DELETE FROM schema_functions")
    await conn.execute(
        "INSERT INTO schema_functions (version, checksum) VALUES ($1, $2)",
        FUNCTIONS_VERSION,
        functions_checksum(),
    )


async def _applied(conn: asyncpg.Connection, migrations: list[Migration]) -> dict[int, tuple[str, str]]:
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    applied = {int(r["version"]): (str(r["name"]), str(r["checksum"])) for r in rows}
    names = tuple(name for name, _ in applied.values())
    if dict(applied.values()) == SQUASHED_INTO_BASELINE and migrations:
        baseline = migrations[0]
        await conn.execute("DELETE FROM schema_migrations WHERE version <= $1", len(SQUASHED_INTO_BASELINE))
        await conn.execute(_RECORD, baseline.version, baseline.name, baseline.checksum)
        log.info("database built by the pre-release migrations: recorded as %s", baseline.name)
        return {baseline.version: (baseline.name, baseline.checksum)}
    if any(name in SQUASHED_INTO_BASELINE for name in names):
        raise MigrationError(
            "the database was partly migrated by a pre-release build; finish with that build first"
        )
    return applied
