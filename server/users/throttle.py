"""Login throttling: fixed-window attempt counters in PostgreSQL, shared by every replica.

Three counters, so that a guesser cannot lock the owner out (OWASP's authentication guidance):
attempts at one username from one peer (tight: a guesser at one address is stopped, the owner
elsewhere is not), attempts from one peer at any username (against spraying many names), and a much
looser ceiling on one username from everywhere (against guessing spread over many addresses, which
does make the owner wait too). An attempt counts on the ceiling only when the two tight counters
let it through, so one peer adds at most its own limit to it. A successful login clears its
username-and-peer counter only. Counters of windows that ended are deleted by a job (server/jobs.py).
"""

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
_FORGET_ENDED = """
DELETE FROM login_attempts WHERE key IN (
    SELECT key FROM login_attempts WHERE window_start <= now() - make_interval(secs => $1) LIMIT $2)
"""
_FORGET_BATCH = 10_000


@dataclass(frozen=True)
class LoginLimits:
    """How many login attempts a username from one peer, a peer, and a username get per window."""

    per_username_and_peer: int
    per_peer: int
    per_username: int
    window_seconds: int

    def limit_of(self, key: str) -> int:
        """The limit of a counter key."""
        if key.startswith("pair:"):
            return self.per_username_and_peer
        return self.per_peer if key.startswith("peer:") else self.per_username


def _pair_key(username: str, peer_host: str) -> str:
    return f"pair:{peer_host}|{username}"


async def count_login_attempt(
    conn: Connection, limits: LoginLimits, *, username: str, peer_host: str
) -> None:
    """Count one attempt: the username-and-peer and peer counters, then (if both let it) the ceiling.

    Raises:
        RateLimitedError: a counter is over its limit (with when it resets).
    """
    await _count(conn, limits, [_pair_key(username, peer_host), f"peer:{peer_host}"])
    await _count(conn, limits, [f"user:{username}"])


async def _count(conn: Connection, limits: LoginLimits, keys: list[str]) -> None:
    rows = await conn.fetch(_COUNT_ATTEMPT, keys, limits.window_seconds)
    over = [row for row in rows if int(row["attempts"]) > limits.limit_of(str(row["key"]))]
    if over:
        raise RateLimitedError(
            "too many login attempts; retry later",
            retry_after_seconds=max(1.0, max(float(row["retry_after"]) for row in over)),
        )


async def count_registration(conn: Connection, limits: LoginLimits, *, peer_host: str) -> None:
    """Count one registration from a peer (each costs a bcrypt hash); RateLimitedError over the limit."""
    rows = await conn.fetch(_COUNT_ATTEMPT, [f"register:{peer_host}"], limits.window_seconds)
    if int(rows[0]["attempts"]) > limits.per_peer:
        raise RateLimitedError(
            "too many registrations from this address; retry later",
            retry_after_seconds=max(1.0, float(rows[0]["retry_after"])),
        )


async def forget_username_attempts(conn: Connection, *, username: str, peer_host: str) -> None:
    """After a successful login the username's counter at that peer starts over."""
    await conn.execute(_FORGET, _pair_key(username, peer_host))


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string such as 'ipv4:127.0.0.1:5555' or 'ipv6:[::1]:5555'."""
    _, _, rest = peer.partition(":")
    host, _, _port = rest.rpartition(":")
    return host or peer


async def forget_ended_windows(conn: Connection, limits: LoginLimits) -> int:
    """Delete the counters whose window ended (a batch at a time); how many went."""
    deleted = 0
    while True:
        status = await conn.execute(_FORGET_ENDED, limits.window_seconds, _FORGET_BATCH)
        count = int(status.split()[-1])
        deleted += count
        if count < _FORGET_BATCH:
            return deleted
