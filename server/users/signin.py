"""Signing in and out: login opens a session, its refresh tokens rotate (each works once), logout ends it.

A login's session is a refresh-token family: presenting a used refresh token ends the whole session
(a stolen token is spent once at most). A rotation retried with its request_id after a lost reply
is not a reuse: while the successor it got is unused, the retry gets that successor again. An
ended session's access tokens stop working at once on this replica and within a poll on the
others (server/auth/sessions.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from server.auth.principal import Principal, Role
from server.auth.tokens import IssuedToken, TokenCodec
from server.db.pool import Connection
from server.errors import InvalidArgumentError, UnauthenticatedError
from server.users import throttle
from server.users.service import CREDENTIALS_BY_NAME, REVOKE_ALL_SESSIONS, User, UserDeps
from server.users.validation import normalize_username
from server.validation import Fields

_OPEN_SESSION = """
WITH s AS (INSERT INTO sessions (id, user_id) VALUES ($1, $2) RETURNING id)
INSERT INTO refresh_tokens (jti, session_id, issued_at, expires_at) SELECT $3, id, $4, $5 FROM s
"""
# The session is locked (shared) first: a Logout or ChangePassword under way is waited for, and a
# session it ended gets no new pair (its row re-checked as committed).
_CLAIM_REFRESH = """
WITH s AS (
    SELECT s.id, u.role FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.id = (SELECT session_id FROM refresh_tokens WHERE jti = $1) AND s.user_id = $2
      AND s.revoked_at IS NULL
    FOR SHARE OF s
)
UPDATE refresh_tokens r SET used_at = now(), used_by_request = $3, successor_jti = $4
FROM s
WHERE r.jti = $1 AND s.id = r.session_id AND r.used_at IS NULL AND r.expires_at > now()
RETURNING s.role
"""
_INSERT_REFRESH = (
    "INSERT INTO refresh_tokens (jti, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)"
)
# The successor that the rotation by this request got, while it is unused and its session lives.
# Locked (shared): a rotation of the successor or an end of the session under way is waited for,
# and the row then re-checked as committed, so a retry never answers with a spent token.
_RETRIED_REFRESH = """
SELECT u.role, n.jti::text, n.issued_at, n.expires_at
FROM refresh_tokens r
JOIN refresh_tokens n ON n.jti = r.successor_jti
JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id
WHERE r.jti = $1 AND s.user_id = $2 AND r.used_by_request = $3
  AND n.used_at IS NULL AND n.issued_at IS NOT NULL AND s.revoked_at IS NULL AND n.expires_at > now()
FOR SHARE OF n, s
"""
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


@dataclass(frozen=True)
class TokenPair:
    """Access and refresh tokens with their expiry times."""

    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


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
        row = await conn.fetchrow(CREDENTIALS_BY_NAME, name)
    stored_hash = None if row is None else str(row["password_hash"])
    if not await deps.hasher.verify(password, stored_hash) or row is None:
        raise UnauthenticatedError("wrong username or password", reason="WRONG_CREDENTIALS")
    user = User.from_record(row)
    session_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        tokens = await _issue_pair(
            conn,
            deps.tokens,
            user_id=user.id,
            role=user.role,
            session_id=session_id,
            jti=str(uuid.uuid4()),
            new=True,
        )
        await throttle.forget_username_attempts(conn, username=name, peer_host=peer_host)
    return tokens, user


async def refresh(
    pool: asyncpg.Pool, deps: UserDeps, *, refresh_token: str, request_id: str = ""
) -> TokenPair:
    """Rotate a refresh token; presenting a used one revokes its whole session.

    A retry with the request_id of the rotation that used the token gets the same refresh token
    that rotation issued (and a fresh access token), as long as that one is unused.

    Raises:
        InvalidArgumentError: the token is empty, or request_id is not a UUID.
        UnauthenticatedError: the token is invalid, expired, revoked or reused.
    """
    fields = Fields()
    if not refresh_token:
        fields.add("refresh_token", "required")
    rid = fields.uuid("request_id", request_id) if request_id else None
    fields.done()
    claims = deps.tokens.verify_refresh(refresh_token)
    successor = str(uuid.uuid4())
    async with pool.acquire() as conn:
        async with conn.transaction():
            role = await conn.fetchval(_CLAIM_REFRESH, claims.jti, claims.user_id, rid, successor)
            if role is not None:
                return await _issue_pair(
                    conn,
                    deps.tokens,
                    user_id=claims.user_id,
                    role=Role(role),
                    session_id=claims.session_id,
                    jti=successor,
                )
            retried = await conn.fetchrow(_RETRIED_REFRESH, claims.jti, claims.user_id, rid) if rid else None
            if retried is not None:
                issued = (int(retried["issued_at"].timestamp()), int(retried["expires_at"].timestamp()))
                again = deps.tokens.issue_refresh(
                    user_id=claims.user_id, session_id=claims.session_id, jti=retried["jti"], issued=issued
                )
                return _pair(deps.tokens, again, claims.user_id, Role(retried["role"]), claims.session_id)
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
    jti: str,
    new: bool = False,
) -> TokenPair:
    refresh_token = tokens.issue_refresh(user_id=user_id, session_id=session_id, jti=jti)
    issued_at = datetime.fromtimestamp(refresh_token.issued_at, UTC)
    refresh_expires = datetime.fromtimestamp(refresh_token.expires_at, UTC)
    if new:
        await conn.execute(_OPEN_SESSION, session_id, user_id, jti, issued_at, refresh_expires)
    else:
        await conn.execute(_INSERT_REFRESH, jti, session_id, issued_at, refresh_expires)
    return _pair(tokens, refresh_token, user_id, role, session_id)


def _pair(
    tokens: TokenCodec, refresh_token: IssuedToken, user_id: str, role: Role, session_id: str
) -> TokenPair:
    """A refresh token with a fresh access token of its session."""
    access = tokens.issue_access(user_id=user_id, role=role, session_id=session_id)
    return TokenPair(
        access_token=access.token,
        access_expires_at=datetime.fromtimestamp(access.expires_at, UTC),
        refresh_token=refresh_token.token,
        refresh_expires_at=datetime.fromtimestamp(refresh_token.expires_at, UTC),
    )


async def logout(pool: asyncpg.Pool, deps: UserDeps, *, principal: Principal, all_sessions: bool) -> int:
    """End the caller's session (or all of them), access tokens included; return how many ended."""
    if all_sessions:
        rows = await pool.fetch(REVOKE_ALL_SESSIONS, principal.user_id)
    else:
        rows = await pool.fetch(_REVOKE_SESSION, principal.session_id, principal.user_id)
    deps.ended_sessions.end(row[0] for row in rows)
    return len(rows)
