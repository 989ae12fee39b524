"""What a process needs before it serves: the JWT secret, the database, its schema and the admin.

Shared by the server (server/app.py), the parent of its workers (server/parent.py) and the
command-line tools (server/__main__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import tempfile
from pathlib import Path

import asyncpg

from server.auth.passwords import PasswordHasher
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.config import MIN_JWT_SECRET_BYTES, Config, ConfigError
from server.db import errors as db_errors
from server.db.embedded import EmbeddedPostgres
from server.db.migrate import migrate
from server.errors import UnavailableError
from server.users import service as users
from server.users.throttle import LoginLimits

log = logging.getLogger(__name__)

_JWT_SECRET_FILE = "jwt_secret"
_FIRST_RETRY_SECONDS = 0.5
_MAX_RETRY_SECONDS = 5.0
_CONNECT_TIMEOUT_SECONDS = 5.0


def user_deps(config: Config, jwt_secret: str) -> users.UserDeps:
    """The user service's collaborators, built from config."""
    return users.UserDeps(
        hasher=PasswordHasher(config.bcrypt_rounds),
        tokens=token_codec(config, jwt_secret),
        login_limits=LoginLimits(
            per_username_and_peer=config.login_attempts_per_username_and_peer,
            per_peer=config.login_attempts_per_peer,
            per_username=config.login_attempts_per_username,
            window_seconds=config.login_window_seconds,
        ),
        ended_sessions=EndedSessions(access_ttl_seconds=config.access_token_ttl_seconds),
    )


def token_codec(config: Config, jwt_secret: str) -> TokenCodec:
    """The JWT codec for this deployment."""
    return TokenCodec(
        secret=jwt_secret,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        access_ttl_seconds=config.access_token_ttl_seconds,
        refresh_ttl_seconds=config.refresh_token_ttl_seconds,
    )


def usable_data_dir(config: Config) -> Path:
    """SENDINCHAT_DATA_DIR, created if need be; a ConfigError when it cannot be a writable folder."""
    folder = config.data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(f"SENDINCHAT_DATA_DIR: cannot use {str(folder)!r} ({why})") from None
    return folder


def load_jwt_secret(config: Config) -> str:
    """The configured secret, or (embedded mode only) a dev secret generated once in the data folder."""
    if config.jwt_secret is not None:
        return config.jwt_secret
    path = usable_data_dir(config) / _JWT_SECRET_FILE
    if not path.exists():
        # Written whole to a private temporary file, then linked into place: link() fails if
        # another replica got there first, and nobody ever reads a half-written secret.
        fd, temporary = tempfile.mkstemp(dir=config.data_dir, prefix=".jwt_secret.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    secret = path.read_text().strip()
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(
            f"SENDINCHAT_DATA_DIR: {path} holds a JWT secret under {MIN_JWT_SECRET_BYTES} bytes"
        )
    return secret


async def open_database(config: Config) -> tuple[str, EmbeddedPostgres | None]:
    """The database URL to use, starting the embedded PostgreSQL when none is configured."""
    if config.database_url is not None:
        return config.database_url, None
    folder = usable_data_dir(config)
    if any(ch.isspace() for ch in str(folder.resolve())):  # PostgreSQL's options split on them
        raise ConfigError(
            f"SENDINCHAT_DATA_DIR: the embedded PostgreSQL cannot run in {str(folder.resolve())!r}"
            " (a path with spaces); set SENDINCHAT_DATA_DIR to a folder without, or DATABASE_URL"
        )
    starting = asyncio.ensure_future(asyncio.to_thread(EmbeddedPostgres, folder))
    try:
        embedded = await asyncio.shield(starting)
    except asyncio.CancelledError:  # stopped while it starts: let it come up, then stop it
        with contextlib.suppress(Exception):
            await asyncio.to_thread((await starting).stop)
        raise
    try:
        return await embedded.ensure_database(), embedded
    except BaseException:
        await asyncio.shield(asyncio.to_thread(embedded.stop))
        raise


async def run_migrations(dsn: str, *, wait_seconds: float = 0.0) -> list[str]:
    """Apply pending migrations on a dedicated connection, waiting up to `wait_seconds` for the database."""
    conn = await connect_patiently(dsn, wait_seconds=wait_seconds)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def connect_patiently(dsn: str, *, wait_seconds: float) -> asyncpg.Connection:
    """A connection, retried with backoff (a log line per attempt) while the database is unreachable.

    A replica started while PostgreSQL is down (or still starting, or failing over) comes up by
    itself once it answers; after `wait_seconds` it gives up with UnavailableError.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    delay = _FIRST_RETRY_SECONDS
    for attempt in itertools.count(1):
        try:
            return await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:
            if not db_errors.is_connect_failure(exc):
                raise
            left = deadline - loop.time()
            if left <= 0:
                raise UnavailableError(
                    f"cannot reach the database after {attempt} attempts in {wait_seconds:g} s "
                    f"(last: {type(exc).__name__}: {exc})"
                ) from None
            log.warning("cannot reach the database (attempt %d: %s); retrying in %.1f s", attempt, exc, delay)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_RETRY_SECONDS)
    raise AssertionError("unreachable")


async def ensure_admin(config: Config, pool: asyncpg.Pool, jwt_secret: str) -> None:
    """Embedded mode with SENDINCHAT_ADMIN_USERNAME and _PASSWORD: make sure that admin exists."""
    if config.embedded and config.admin_username and config.admin_password:
        admin = await users.ensure_admin(
            pool,
            user_deps(config, jwt_secret),
            username=config.admin_username,
            password=config.admin_password,
        )
        log.info("admin user %s is ready", admin.username)
