"""Helpers tests share: unique names, accounts with tokens, status details."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sendinchat.v1 import users_pb2
from server.db.pool import Connection
from server.users.service import UserDeps, ensure_admin

PASSWORD = "correct-horse-battery"


def random_name(prefix: str = "u") -> str:
    """A username no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def request_id() -> str:
    """A fresh request_id."""
    return str(uuid.uuid4())


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Account:
    """A registered, logged-in user."""

    user: users_pb2.User
    tokens: users_pb2.TokenPair
    password: str = PASSWORD

    @property
    def id(self) -> str:
        """The user's id."""
        return self.user.id

    @property
    def username(self) -> str:
        """The user's name."""
        return self.user.username

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        """Metadata for calls as this user."""
        return bearer(self.tokens.access_token)


async def signed_up(stubs: Any, username: str | None = None, password: str = PASSWORD) -> Account:
    """Register and log in a new user through the RPCs."""
    name = username or random_name()
    await stubs.users.Register(users_pb2.RegisterRequest(username=name, password=password))
    reply = await stubs.users.Login(users_pb2.LoginRequest(username=name, password=password))
    return Account(reply.user, reply.tokens, password)


async def signed_up_admin(server: Any, username: str | None = None) -> Account:
    """Create an admin directly in the database (as `python -m server create-admin` does) and log in."""
    from server.bootstrap import user_deps

    deps: UserDeps = user_deps(server.config, server.config.jwt_secret)
    name = username or random_name("admin")
    await ensure_admin(server.pool, deps, username=name, password=PASSWORD)
    reply = await server.stubs.users.Login(users_pb2.LoginRequest(username=name, password=PASSWORD))
    return Account(reply.user, reply.tokens)


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status carried in the trailers, if any."""
    return rpc_status.from_call(error)  # type: ignore[arg-type]  # AioRpcError has the Call accessors


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of an error (fails the test if there is none)."""
    status = status_of(error)
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an INVALID_ARGUMENT error."""
    status = status_of(error)
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError(f"no BadRequest in {status}")


def retry_delay_seconds(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a RESOURCE_EXHAUSTED error."""
    status = status_of(error)
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    raise AssertionError(f"no RetryInfo in {status}")


# Backends waiting for a lock this connection holds, or queued behind such a waiter (a row's second
# waiter waits for the first one's tuple lock); waits on anyone else (a job's, another test's) not.
_BLOCKED_BY_ME = """
WITH RECURSIVE blocked(pid) AS (
    SELECT a.pid FROM pg_stat_activity a
    WHERE a.datname = current_database() AND pg_backend_pid() = ANY (pg_blocking_pids(a.pid))
    UNION
    SELECT a.pid FROM pg_stat_activity a JOIN blocked b ON b.pid = ANY (pg_blocking_pids(a.pid))
)
SELECT array_agg(pid) FROM blocked
"""


async def lock_waiters(conn: Connection) -> list[int]:
    """The backends that wait for a lock `conn` holds, directly or behind another waiter."""
    # Inside a transaction PostgreSQL keeps the first read of pg_stat_activity: a backend that
    # connected since would stay unseen.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    pids = await conn.fetchval(_BLOCKED_BY_ME)
    return list(pids or [])


async def waiting_on_a_lock(conn: Connection, count: int = 1) -> int:
    """A backend that waits for a lock `conn` holds, once `count` of them do (polled)."""
    for _ in range(200):
        pids = await lock_waiters(conn)
        if len(pids) >= count:
            return pids[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} statements wait for a lock")
