"""The Client's plumbing: one channel, the token pair and its refresh, retries, pages."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from sendinchat.errors import (
    REFRESH_TOKEN_MISSING,
    ConflictError,
    SendInChatError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from sendinchat.tokens import KeepsRotation, TokenStore
from sendinchat.v1 import chat_pb2_grpc, ledger_pb2_grpc, users_pb2, users_pb2_grpc

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

_RETRYABLE = (ConflictError, UnavailableError)
# A refresh whose reply may be lost: sent again with its request_id.
_LOST_REPLY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_REFRESH_TIMEOUT_SECONDS = 10.0
_EXPIRY_MARGIN_SECONDS = 5
_BACKOFF_SECONDS = 0.05
_MAX_BACKOFF_SECONDS = 2.0


class _PageRequest(Protocol):
    page_token: str


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


Req = TypeVar("Req", bound=_PageRequest)
Page = TypeVar("Page", bound=_Page)


class ClientBase:
    """A channel, the raw stubs and the caller's tokens; the services' methods build on it."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        retries: int = 3,
        token_store: TokenStore | None = None,
    ) -> None:
        """Open a channel (it connects lazily, on the first call).

        Args:
            target: The server's host:port.
            credentials: TLS credentials (grpc.ssl_channel_credentials()); None: plaintext.
            retries: How often a call that is safe to repeat is retried on ABORTED or UNAVAILABLE
                (a token refresh: on UNAVAILABLE or its 10 s deadline).
            token_store: Where the token pair is kept between runs and shared with other
                processes (the CLI keeps a file); the client starts with the stored pair.
        """
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self.users = users_pb2_grpc.UserServiceStub(self._channel)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self._channel)
        self._retries = retries
        self._store = token_store
        self._refresh_lock = asyncio.Lock()
        self._rotation: tuple[str, str] | None = None  # a refresh token and its rotation's request_id
        self.tokens: users_pb2.TokenPair | None = None if token_store is None else token_store.load()
        self.closed = False

    async def close(self) -> None:
        """Close the channel: streams being read end, unary calls in flight raise asyncio.CancelledError."""
        self.closed = True
        await self._channel.close(None)

    @property
    def metadata(self) -> Metadata:
        """The authorization metadata for the current access token.

        Raises:
            UnauthenticatedError: The client is not logged in.
        """
        if self.tokens is None:
            raise UnauthenticatedError(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
        return (("authorization", f"Bearer {self.tokens.access_token}"),)

    @property
    def access_token_expiring(self) -> bool:
        """True when the access token expires within the next few seconds."""
        if self.tokens is None or not self.tokens.HasField("access_token_expire_time"):
            return False
        return self.tokens.access_token_expire_time.ToSeconds() < time.time() + _EXPIRY_MARGIN_SECONDS

    def _keep(self, tokens: users_pb2.TokenPair | None) -> None:
        """Use a new token pair (None: logged out) and hand it to the store."""
        self.tokens = tokens
        if self._store is not None:
            self._store.save(tokens)

    async def _rotate(self) -> None:
        """RefreshToken with the current pair; the caller holds the refresh lock.

        Each attempt has a deadline, and a lost reply is retried with the same request_id: the
        server then answers with the refresh token it issued (a retry without it is a reuse and
        would end the session). The id stays the token's until a rotation succeeds, so a refresh
        given up (out of retries, or cancelled) and tried again later is still the same request:
        by this Client, and by the next one sharing a token store that keeps it (KeepsRotation).
        """
        if self.tokens is None:
            raise UnauthenticatedError(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
        token = self.tokens.refresh_token
        if not token:  # an access token alone (the CLI's SENDINCHAT_TOKEN): nothing to renew it with
            raise UnauthenticatedError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the access token has expired (or is about to) and there is no refresh token to renew it;"
                " log in again",
                reason=REFRESH_TOKEN_MISSING,
            )
        request = users_pb2.RefreshTokenRequest(refresh_token=token, request_id=self._rotation_id(token))
        for attempt in range(self._retries + 1):
            try:
                reply = await translated(self.users.RefreshToken(request, timeout=_REFRESH_TIMEOUT_SECONDS))
            except SendInChatError as exc:
                if attempt == self._retries or exc.code not in _LOST_REPLY:
                    raise
                await asyncio.sleep(backoff(attempt))
            else:
                self._keep(reply.tokens)
                return

    def _rotation_id(self, refresh_token: str) -> str:
        """The request_id for rotating this refresh token: the one already used for it, if any."""
        if self._rotation is not None and self._rotation[0] == refresh_token:
            return self._rotation[1]
        keeper = self._store if isinstance(self._store, KeepsRotation) else None
        request_id = keeper.load_rotation(refresh_token) if keeper is not None else None
        if not request_id:
            request_id = str(uuid.uuid4())
            if keeper is not None:
                keeper.save_rotation(refresh_token, request_id)
        self._rotation = (refresh_token, request_id)
        return request_id

    async def _refresh_if_stale(self, stale: users_pb2.TokenPair | None) -> None:
        """Refresh unless another task, or another process sharing the store, already replaced `stale`.

        A refresh token works once, and presenting a used one ends the session, so exactly one
        of the contenders may rotate it: the others take the pair it stored.
        """
        async with self._refresh_lock:
            if self._store is None:
                if self.tokens is stale:
                    await self._rotate()
                return
            async with self._store.lock():
                stored = self._store.load()
                if stored is None or stale is None or stored.refresh_token != stale.refresh_token:
                    self.tokens = stored
                    if stored is None:
                        raise UnauthenticatedError(grpc.StatusCode.UNAUTHENTICATED, "logged out")
                    return
                self.tokens = stored
                await self._rotate()

    async def _fresh_metadata(self) -> Metadata:
        """Metadata for a new stream, refreshing first a token about to expire (the stream would end)."""
        if self.access_token_expiring and self.tokens is not None and self.tokens.refresh_token:
            await self._refresh_if_stale(self.tokens)
        return self.metadata

    async def _authorized(self, call: Callable[[Metadata], Awaitable[T]]) -> T:
        """Run a call with the access token, refreshing it once if it has expired."""
        tokens = self.tokens
        try:
            return await translated(call(self.metadata))
        except UnauthenticatedError as exc:
            if tokens is None or exc.reason != "TOKEN_EXPIRED":
                raise
        await self._refresh_if_stale(tokens)
        return await translated(call(self.metadata))

    async def _idempotent(self, call: Callable[[Metadata], Awaitable[T]]) -> T:
        """Run a call that is safe to repeat, retrying ABORTED and UNAVAILABLE with backoff.

        Money calls carry their request_id inside `call`, so every attempt is the same request
        and the server answers a repeat with the first answer.
        """
        for attempt in range(self._retries + 1):
            try:
                return await self._authorized(call)
            except _RETRYABLE:
                if attempt == self._retries:
                    raise
                await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def _paged(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Page],
        request: Req,
        items: Callable[[Page], Iterable[T]],
    ) -> AsyncGenerator[T, None]:
        """Every item of every page, fetching the next page when the last one is used up."""
        while True:
            reply = await self._idempotent(lambda md: method(request, metadata=md))
            for item in items(reply):
                yield item
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token


def one_key(**keys: str) -> str:
    """The name of the one non-empty key; ValueError unless exactly one is given."""
    given = [name for name, value in keys.items() if value]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {' and '.join(keys)}")
    return given[0]


def request_id_or_new(request_id: str | None) -> str:
    """The caller's request_id, or a fresh UUID: every retry of the call then reuses it."""
    return request_id or str(uuid.uuid4())


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp for an aware datetime."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def cancelled_by_close(closed: bool) -> bool:
    """Whether a CancelledError came from close() cancelling a call, not from our task's cancellation."""
    task = asyncio.current_task()
    return closed and not (task is not None and task.cancelling() > 0)


@contextlib.contextmanager
def quiet_on_close(closed: Callable[[], bool]) -> Iterator[None]:
    """The block ends quietly when close() cancels the call it awaits (the caller then checks closed)."""
    try:
        yield
    except asyncio.CancelledError:
        if not cancelled_by_close(closed()):
            raise


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): doubling, capped."""
    return float(min(_BACKOFF_SECONDS * 2**attempt, _MAX_BACKOFF_SECONDS))


async def translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
