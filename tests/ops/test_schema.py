"""The schema's history: the squashed baseline, re-applied functions, and repairs of stored rows."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.bootstrap import run_migrations
from server.db.migrate import (
    FUNCTIONS_CHECKSUM,
    FUNCTIONS_RELEASES,
    FUNCTIONS_VERSION,
    SQUASHED_INTO_BASELINE,
    functions_checksum,
)
from tests.harness import REPO

# The last commit whose server/db/migrations/ held the six files 0001_baseline.sql replaced.
PRE_SQUASH_COMMIT = "3a34fcf"

_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2
"""
_CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2
"""
_INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"
_TRIGGERS = """
SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2
"""
# The pre-release ledger_create_transfers, for one item: $1 initiator, $2 kind, $3 pending, $4 from,
# $5 to, $6 amount, $7 expiry.
_PRE_SQUASH_CREATE = """
SELECT * FROM ledger_create_transfers(
    ARRAY[$1::uuid], ARRAY[gen_random_uuid()], ARRAY[$2::text], ARRAY[$3::boolean], ARRAY[$4::uuid],
    ARRAY[$5::uuid], ARRAY[NULL::text], ARRAY['USD'], ARRAY[$6::bigint], ARRAY[''],
    ARRAY[$7::text::timestamptz])
"""
_FUNCTIONS = """
SELECT proname, pg_get_function_identity_arguments(oid), pg_get_function_result(oid), md5(prosrc)
FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2
"""


def _pre_squash_migrations() -> list[tuple[str, str]]:
    files = []
    for name in SQUASHED_INTO_BASELINE:  # in version order
        shown = subprocess.run(
            ["git", "show", f"{PRE_SQUASH_COMMIT}:server/db/migrations/{name}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.returncode != 0:
            pytest.skip(f"git history before the squash is not in this checkout: {shown.stderr.strip()}")
        files.append((name, shown.stdout))
    return files


async def _connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def _pre_squash_database(servers: Any) -> str:
    """A database built, and recorded, as the pre-release migrator did it."""
    url: str = await servers.empty_database()
    async for conn in _connected(url):
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, (name, sql) in enumerate(_pre_squash_migrations(), start=1):
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    version,
                    name,
                    hashlib.sha256(sql.encode()).hexdigest(),
                )
    return url


async def _schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    async for conn in _connected(url):
        return {
            query: [tuple(row) for row in await conn.fetch(query)]
            for query in (_COLUMNS, _CONSTRAINTS, _INDEXES, _TRIGGERS, _FUNCTIONS)
        }
    raise AssertionError("unreachable")


class TestSquashedMigrations:
    async def test_a_pre_release_database_ends_with_the_schema_a_new_one_gets(self, servers):
        old = await _pre_squash_database(servers)
        new = await servers.empty_database()
        await run_migrations(old)
        await run_migrations(new)
        old_schema, new_schema = await _schema(old), await _schema(new)
        for query in old_schema:
            assert old_schema[query] == new_schema[query], query
        async for conn in _connected(old):
            names = [
                r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
            ]
        assert names == [
            "0001_baseline.sql",
            "0002_final_answers.sql",
            "0003_issuance_limit.sql",
            "0004_refresh_retries.sql",
            "0005_ledger_events_by_user.sql",
        ]

    async def test_an_infinite_expiry_stored_before_the_bound_is_repaired(self, servers):
        url = await _pre_squash_database(servers)
        async for conn in _connected(url):
            alice = await conn.fetchval(
                "INSERT INTO users (username, password_hash) VALUES ('alice', 'x') RETURNING id"
            )
            bob = await conn.fetchval(
                "INSERT INTO users (username, password_hash) VALUES ('bob', 'x') RETURNING id"
            )
            deposit = await conn.fetchrow(_PRE_SQUASH_CREATE, alice, "deposit", False, None, alice, 5, None)
            assert deposit is not None and deposit["outcome"] == "CREATED"
            # The hold the largest valid Timestamp made: 'infinity', never expiring.
            row = await conn.fetchrow(_PRE_SQUASH_CREATE, alice, "transfer", True, alice, bob, 1, "infinity")
            assert row is not None and row["outcome"] == "CREATED"
        assert row is not None
        await run_migrations(url)
        async for conn in _connected(url):
            bounded = await conn.fetchval(
                "SELECT expires_at = created_at + interval '365 days' FROM transfers WHERE id = $1", row["id"]
            )
            assert bounded
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE transfers SET expires_at = 'infinity' WHERE id = $1", row["id"])


class TestFunctions:
    async def test_an_edited_function_is_put_back_by_the_next_migrate_run(self, servers):
        url = await servers.database()
        async for conn in _connected(url):
            await conn.execute(
                "CREATE OR REPLACE FUNCTION chat_money(p_amount bigint, p_currency text) RETURNS text"
                " LANGUAGE sql AS $$ SELECT 'edited by hand' $$"
            )
        await run_migrations(url)
        async for conn in _connected(url):
            assert await conn.fetchval("SELECT chat_money(1234, 'USD')") == "12.34 USD"

    async def test_a_server_older_than_the_database_leaves_the_functions_alone(self, servers):
        url = await servers.database()
        async for conn in _connected(url):
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'x.sql', 'x')"
            )
            await conn.execute(
                "CREATE OR REPLACE FUNCTION chat_money(p_amount bigint, p_currency text) RETURNS text"
                " LANGUAGE sql AS $$ SELECT 'from a newer release' $$"
            )
        assert await run_migrations(url) == []
        async for conn in _connected(url):
            assert await conn.fetchval("SELECT chat_money(1234, 'USD')") == "from a newer release"


class TestFunctionsVersion:
    def test_the_functions_version_stands_for_the_function_files_as_they_are(self):
        assert functions_checksum() == FUNCTIONS_CHECKSUM, (
            "server/db/functions/ changed: add version "
            f"{FUNCTIONS_VERSION + 1}: {functions_checksum()!r} to FUNCTIONS_RELEASES in server/db/migrate.py"
        )
        assert len(set(FUNCTIONS_RELEASES.values())) == len(FUNCTIONS_RELEASES)  # no version reused

    async def test_a_server_with_older_functions_leaves_the_newer_ones_alone(self, servers):
        url = await servers.database()
        async for conn in _connected(url):
            await conn.execute("UPDATE schema_functions SET version = $1", FUNCTIONS_VERSION + 1)
            await conn.execute(
                "CREATE OR REPLACE FUNCTION chat_money(p_amount bigint, p_currency text) RETURNS text"
                " LANGUAGE sql AS $$ SELECT 'from newer functions' $$"
            )
        await run_migrations(url)
        async for conn in _connected(url):
            assert await conn.fetchval("SELECT chat_money(1234, 'USD')") == "from newer functions"
