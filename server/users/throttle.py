"""Login throttling: fixed-window attempt counters in PostgreSQL, shared by every replica."""

from __future__ import annotations

from dataclasses import dataclass

from server.db.pool import Connection
from server.errors import RateLimitedError

_COUNT_ATTEMPT = """
INSERT INTO login_attempts AS a (key, window_start, attempts)
SELECT k, now(), 1 FROM unnest($1::text[]) AS k
ON CONFLICT (key) DO UPDATE SET
    window_start = CASE WHEN a.window_start <= now() - make_interval(secs => $2) THEN now()
                        ELSE a.window_start END,
    attempts = CASE WHEN a.window_start <= now() - make_interval(secs => $2) THEN 1
                    ELSE a.attempts + 1 END
RETURNING key, attempts,
          extract(epoch FROM a.window_start + make_interval(secs => $2) - now())::float8 AS retry_after
"""
_FORGET = "DELETE FROM login_attempts WHERE key = $1"


@dataclass(frozen=True)
class LoginLimits:
    """How many login attempts a username and a peer get per window."""

    per_username: int
    per_peer: int
    window_seconds: int


def _keys(username: str, peer_host: str) -> tuple[str, str]:
    return f"user:{username}", f"peer:{peer_host}"


async def count_login_attempt(
    conn: Connection, limits: LoginLimits, *, username: str, peer_host: str
) -> None:
    """Count one attempt for the username and the peer; RateLimitedError when either is over its limit."""
    user_key, peer_key = _keys(username, peer_host)
    rows = await conn.fetch(_COUNT_ATTEMPT, [user_key, peer_key], limits.window_seconds)
    for row in rows:
        limit = limits.per_username if row["key"] == user_key else limits.per_peer
        if int(row["attempts"]) > limit:
            raise RateLimitedError(
                "too many login attempts; retry later",
                retry_after_seconds=max(1.0, float(row["retry_after"])),
            )


async def count_registration(conn: Connection, limits: LoginLimits, *, peer_host: str) -> None:
    """Count one registration from a peer (each costs a bcrypt hash); RateLimitedError over the limit."""
    rows = await conn.fetch(_COUNT_ATTEMPT, [f"register:{peer_host}"], limits.window_seconds)
    if int(rows[0]["attempts"]) > limits.per_peer:
        raise RateLimitedError(
            "too many registrations from this address; retry later",
            retry_after_seconds=max(1.0, float(rows[0]["retry_after"])),
        )


async def forget_username_attempts(conn: Connection, *, username: str) -> None:
    """After a successful login the username's counter starts over."""
    await conn.execute(_FORGET, f"user:{username}")


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string such as 'ipv4:127.0.0.1:5555' or 'ipv6:[::1]:5555'."""
    _, _, rest = peer.partition(":")
    host, _, _port = rest.rpartition(":")
    return host or peer
