"""Users: registration, profiles, passwords, admins (signing in and out: server/users/signin.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.auth.passwords import PasswordHasher
from server.auth.principal import Principal, Role
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.db.records import bind
from server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from server.users import throttle
from server.users.validation import check_password, normalize_display_name, normalize_username
from server.validation import parse_uuid

_USER_COLUMNS = "id::text, username, display_name, role, created_at"
_INSERT_USER = f"""
INSERT INTO users (username, password_hash, display_name, role) VALUES ($1, $2, $3, $4)
RETURNING {_USER_COLUMNS}
"""
_USER_BY_ID = f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1"
_USER_BY_NAME = f"SELECT {_USER_COLUMNS} FROM users WHERE username = $1"
CREDENTIALS_BY_NAME = f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE username = $1"
_CREDENTIALS_BY_ID = f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE id = $1"
REVOKE_ALL_SESSIONS = (
    "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING id::text"
)
_SET_PASSWORD = "UPDATE users SET password_hash = $2 WHERE id = $1"
_PROMOTE = "UPDATE users SET role = 'admin' WHERE username = $1 RETURNING " + _USER_COLUMNS


@dataclass(frozen=True)
class User:
    """A user as stored."""

    id: str
    username: str
    display_name: str
    role: Role
    created_at: datetime

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> User:
        """Bind a users row (selected as _USER_COLUMNS)."""
        return bind(cls, row)


@dataclass(frozen=True)
class UserDeps:
    """What the user service needs besides a database: hashing, tokens, throttling, ended sessions."""

    hasher: PasswordHasher
    tokens: TokenCodec
    login_limits: throttle.LoginLimits
    ended_sessions: EndedSessions


async def register(
    pool: asyncpg.Pool,
    deps: UserDeps,
    *,
    username: str,
    password: str,
    display_name: str,
    role: Role = Role.USER,
    peer_host: str | None = None,
) -> User:
    """Create a user; with peer_host, registrations from that address are throttled.

    Raises:
        InvalidArgumentError: a field breaks its rule.
        AlreadyExistsError: the username is taken (case-insensitively).
        RateLimitedError: too many registrations from this peer.
    """
    violations: dict[str, str] = {}
    for check in (
        lambda: normalize_username(username),
        lambda: check_password(password),
        lambda: normalize_display_name(display_name),
    ):
        try:
            check()
        except InvalidArgumentError as exc:
            violations.update(exc.violations)
    if violations:
        raise InvalidArgumentError(violations)
    name = normalize_username(username)
    if peer_host is not None:
        async with pool.acquire() as conn:
            await throttle.count_registration(conn, deps.login_limits, peer_host=peer_host)
    password_hash = await deps.hasher.hash(password)
    try:
        row = await pool.fetchrow(
            _INSERT_USER, name, password_hash, normalize_display_name(display_name), role.value
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "users_username_key":
            raise AlreadyExistsError(f"username {name!r} is taken", reason="USERNAME_TAKEN") from None
        raise
    assert row is not None
    return User.from_record(row)


async def get_user(pool: asyncpg.Pool, *, user_id: str | None = None, username: str | None = None) -> User:
    """A user by id or by username.

    Raises:
        InvalidArgumentError: neither key, or a malformed one.
        NotFoundError: no such user.
    """
    if user_id:
        row = await pool.fetchrow(_USER_BY_ID, parse_uuid(user_id, "user_id"))
    elif username:
        row = await pool.fetchrow(_USER_BY_NAME, normalize_username(username))
    else:
        raise InvalidArgumentError.field("lookup", "set user_id or username")
    if row is None:
        raise NotFoundError("user not found")
    return User.from_record(row)


async def change_password(
    pool: asyncpg.Pool,
    deps: UserDeps,
    *,
    principal: Principal,
    old_password: str,
    new_password: str,
    peer_host: str,
) -> None:
    """Replace the caller's password and end every session of the caller (this one included).

    Raises:
        InvalidArgumentError: the new password breaks the rules.
        PermissionDeniedError: the old password is wrong.
        RateLimitedError: too many wrong attempts.
    """
    check_password(new_password, "new_password")
    row = await pool.fetchrow(_CREDENTIALS_BY_ID, principal.user_id)
    if row is None:
        raise NotFoundError("user not found")
    async with pool.acquire() as conn:
        await throttle.count_login_attempt(
            conn, deps.login_limits, username=str(row["username"]), peer_host=peer_host
        )
    if not await deps.hasher.verify(old_password, str(row["password_hash"])):
        raise PermissionDeniedError("old_password is wrong")
    new_hash = await deps.hasher.hash(new_password)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_SET_PASSWORD, principal.user_id, new_hash)
        ended = await conn.fetch(REVOKE_ALL_SESSIONS, principal.user_id)
    deps.ended_sessions.end(row[0] for row in ended)


async def ensure_admin(pool: asyncpg.Pool, deps: UserDeps, *, username: str, password: str) -> User:
    """Create `username` as an admin, or promote the existing user of that name.

    Raises:
        PermissionDeniedError: the user exists and `password` is not theirs (promoting someone
            who merely registered the name first would hand them the admin role).
    """
    try:
        return await register(
            pool, deps, username=username, password=password, display_name="", role=Role.ADMIN
        )
    except AlreadyExistsError:
        name = normalize_username(username)
        row = await pool.fetchrow(CREDENTIALS_BY_NAME, name)
        if row is None or not await deps.hasher.verify(password, str(row["password_hash"])):
            raise PermissionDeniedError(
                f"user {name!r} exists and the password given is not theirs; not promoted"
            ) from None
        promoted = await pool.fetchrow(_PROMOTE, name)
        assert promoted is not None
        return User.from_record(promoted)
