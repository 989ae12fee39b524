"""Users: registration, login sessions with rotating refresh tokens, profiles, passwords."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from server.auth.passwords import PasswordHasher
from server.auth.principal import Principal, Role
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.db.pool import Connection
from server.db.records import bind
from server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
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
_CREDENTIALS_BY_NAME = f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE username = $1"
_CREDENTIALS_BY_ID = f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE id = $1"
_OPEN_SESSION = """
WITH s AS (INSERT INTO sessions (id, user_id) VALUES ($1, $2) RETURNING id)
INSERT INTO refresh_tokens (jti, session_id, expires_at) SELECT $3, id, $4 FROM s
"""
_CLAIM_REFRESH = """
UPDATE refresh_tokens r SET used_at = now()
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE r.jti = $1 AND s.id = r.session_id AND s.user_id = $2
  AND r.used_at IS NULL AND s.revoked_at IS NULL AND r.expires_at > now()
RETURNING u.role
"""
_INSERT_REFRESH = "INSERT INTO refresh_tokens (jti, session_id, expires_at) VALUES ($1, $2, $3)"
_REVOKE_FAMILY_OF_USED = """
UPDATE sessions SET revoked_at = now()
WHERE revoked_at IS NULL
  AND id = (SELECT session_id FROM refresh_tokens WHERE jti = $1 AND used_at IS NOT NULL)
RETURNING id::text
"""
_REVOKE_SESSION = (
    "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL "
    "RETURNING id::text"
)
_REVOKE_ALL = (
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
class TokenPair:
    """Access and refresh tokens with their expiry times."""

    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


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


async def login(
    pool: asyncpg.Pool, deps: UserDeps, *, username: str, password: str, peer_host: str
) -> tuple[TokenPair, User]:
    """Check credentials and open a session.

    Raises:
        InvalidArgumentError: username or password is empty, or the username breaks the username rule.
        RateLimitedError: too many attempts for this username or from this peer.
        UnauthenticatedError: unknown user or wrong password (indistinguishable, also in time).
    """
    if not username.strip() or not password:
        raise InvalidArgumentError(
            {"username": "required"} if not username.strip() else {"password": "required"}
        )
    name = normalize_username(username)  # no such user can exist under a name that breaks the rule
    async with pool.acquire() as conn:
        await throttle.count_login_attempt(conn, deps.login_limits, username=name, peer_host=peer_host)
        row = await conn.fetchrow(_CREDENTIALS_BY_NAME, name)
    stored_hash = None if row is None else str(row["password_hash"])
    if not await deps.hasher.verify(password, stored_hash) or row is None:
        raise UnauthenticatedError("wrong username or password", reason="WRONG_CREDENTIALS")
    user = User.from_record(row)
    session_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        tokens = await _issue_pair(
            conn, deps.tokens, user_id=user.id, role=user.role, session_id=session_id, new=True
        )
        await throttle.forget_username_attempts(conn, username=name, peer_host=peer_host)
    return tokens, user


async def refresh(pool: asyncpg.Pool, deps: UserDeps, *, refresh_token: str) -> TokenPair:
    """Rotate a refresh token; presenting a used one revokes its whole session.

    Raises:
        InvalidArgumentError: the token is empty.
        UnauthenticatedError: the token is invalid, expired, revoked or reused.
    """
    if not refresh_token:
        raise InvalidArgumentError.field("refresh_token", "required")
    claims = deps.tokens.verify_refresh(refresh_token)
    async with pool.acquire() as conn:
        async with conn.transaction():
            role = await conn.fetchval(_CLAIM_REFRESH, claims.jti, claims.user_id)
            if role is not None:
                return await _issue_pair(
                    conn, deps.tokens, user_id=claims.user_id, role=Role(role), session_id=claims.session_id
                )
        revoked = [row[0] for row in await conn.fetch(_REVOKE_FAMILY_OF_USED, claims.jti)]
    deps.ended_sessions.end(revoked)
    if revoked:
        raise UnauthenticatedError(
            "refresh token was already used; its session has ended", reason="REFRESH_TOKEN_REUSED"
        )
    raise UnauthenticatedError("refresh token is revoked or unknown")


async def _issue_pair(
    conn: Connection,
    tokens: TokenCodec,
    *,
    user_id: str,
    role: Role,
    session_id: str,
    new: bool = False,
) -> TokenPair:
    jti = str(uuid.uuid4())
    refresh_token = tokens.issue_refresh(user_id=user_id, session_id=session_id, jti=jti)
    refresh_expires = datetime.fromtimestamp(refresh_token.expires_at, UTC)
    if new:
        await conn.execute(_OPEN_SESSION, session_id, user_id, jti, refresh_expires)
    else:
        await conn.execute(_INSERT_REFRESH, jti, session_id, refresh_expires)
    access = tokens.issue_access(user_id=user_id, role=role, session_id=session_id)
    return TokenPair(
        access_token=access.token,
        access_expires_at=datetime.fromtimestamp(access.expires_at, UTC),
        refresh_token=refresh_token.token,
        refresh_expires_at=refresh_expires,
    )


async def logout(pool: asyncpg.Pool, deps: UserDeps, *, principal: Principal, all_sessions: bool) -> int:
    """End the caller's session (or all of them), access tokens included; return how many ended."""
    if all_sessions:
        rows = await pool.fetch(_REVOKE_ALL, principal.user_id)
    else:
        rows = await pool.fetch(_REVOKE_SESSION, principal.session_id, principal.user_id)
    deps.ended_sessions.end(row[0] for row in rows)
    return len(rows)


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
        ended = await conn.fetch(_REVOKE_ALL, principal.user_id)
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
        row = await pool.fetchrow(_CREDENTIALS_BY_NAME, name)
        if row is None or not await deps.hasher.verify(password, str(row["password_hash"])):
            raise PermissionDeniedError(
                f"user {name!r} exists and the password given is not theirs; not promoted"
            ) from None
        promoted = await pool.fetchrow(_PROMOTE, name)
        assert promoted is not None
        return User.from_record(promoted)
