"""The one server interceptor: authentication, error mapping, stream lifetimes, observation.

Each method's wrapped handler is built once and cached; per call it authenticates from the
`authorization` metadata (a valid access token of a session that has not ended), binds the
principal, runs the real handler, turns domain errors into statuses (server/status.py) and
unexpected ones into INTERNAL with a correlation id, and records one log line and metrics.
Wrapped handlers keep the kind of the real one, so a bidi client that opens a stream and waits is
still refused before anything is read; a stream ends when its token expires or its session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

import asyncpg
import grpc

from server import errors, status
from server.auth.principal import Principal, set_principal
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.observability import RpcObserver

T = TypeVar("T")
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
log = logging.getLogger(__name__)

PUBLIC_METHODS = frozenset(
    {
        "/sendinchat.v1.UserService/Register",
        "/sendinchat.v1.UserService/Login",
        "/sendinchat.v1.UserService/RefreshToken",
    }
)
PUBLIC_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# A connection that dies mid-call; failures to open one are UnavailableError already (db/pool.py).
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
)
_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)
_SESSION_ENDED = (
    "the session of this access token has ended (logout, password change or a reused refresh token); "
    "log in again"
)


class StreamLifetimes:
    """Ends streaming RPCs when the caller's token expires or session ends, or the server shuts down."""

    def __init__(self) -> None:
        self._scopes: set[asyncio.Timeout] = set()
        self._by_session: dict[str, set[asyncio.Timeout]] = {}
        self._session_ended: set[asyncio.Timeout] = set()
        self.closing = False

    async def run(self, call: Callable[[], Awaitable[T]], principal: Principal | None) -> T:
        """Run a streaming handler until it returns, its token expires, end_session() or close_all()."""
        if self.closing:
            raise errors.UnavailableError("server is shutting down; reconnect to another replica")
        loop = asyncio.get_running_loop()
        deadline = None if principal is None else loop.time() + (principal.expires_at - time.time())
        scope = asyncio.timeout_at(deadline)
        session_id = None if principal is None else principal.session_id
        try:
            async with scope:
                self._track(scope, session_id)
                try:
                    return await call()
                finally:
                    self._untrack(scope, session_id)
        except TimeoutError:
            if not scope.expired():
                raise
            if self.closing:
                raise errors.UnavailableError("server is shutting down; reconnect and resume") from None
            if scope in self._session_ended:
                raise errors.UnauthenticatedError(_SESSION_ENDED, reason="SESSION_ENDED") from None
            raise errors.UnauthenticatedError(
                "access token expired; reconnect with a fresh token", reason="TOKEN_EXPIRED"
            ) from None
        finally:
            self._session_ended.discard(scope)

    def _track(self, scope: asyncio.Timeout, session_id: str | None) -> None:
        self._scopes.add(scope)
        if session_id is not None:
            self._by_session.setdefault(session_id, set()).add(scope)

    def _untrack(self, scope: asyncio.Timeout, session_id: str | None) -> None:
        self._scopes.discard(scope)
        if session_id is not None and (session := self._by_session.get(session_id)) is not None:
            session.discard(scope)
            if not session:
                del self._by_session[session_id]

    def end_session(self, session_id: str) -> None:
        """End the open streams of a session that ended (they finish with UNAUTHENTICATED)."""
        scopes = self._by_session.pop(session_id, set())
        if scopes:
            now = asyncio.get_running_loop().time()
            for scope in scopes:
                if not scope.expired():  # an expiring one is ending already, and refuses a reschedule
                    self._session_ended.add(scope)
                    scope.reschedule(now)

    def close_all(self) -> None:
        """End every open stream now (they finish with UNAVAILABLE)."""
        self.closing = True
        now = asyncio.get_running_loop().time()
        for scope in list(self._scopes):
            if not scope.expired():
                scope.reschedule(now)


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, error mapping, stream lifetimes and observation for every RPC."""

    def __init__(
        self,
        *,
        tokens: TokenCodec,
        ended_sessions: EndedSessions,
        observer: RpcObserver,
        streams: StreamLifetimes,
    ) -> None:
        self._tokens = tokens
        self._ended_sessions = ended_sessions
        self._observer = observer
        self._streams = streams
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: let grpc answer UNIMPLEMENTED
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        public = method in PUBLIC_METHODS or method.startswith(PUBLIC_SERVICE_PREFIXES)
        codecs: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if not handler.request_streaming and not handler.response_streaming:
            unary_unary = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

            async def unary_unary_behavior(request: Any, context: Context) -> Any:
                return await self._run(method, public, context, lambda: unary_unary(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary_behavior, **codecs)
        if handler.request_streaming and not handler.response_streaming:
            stream_unary = cast(Callable[..., Awaitable[Any]], handler.stream_unary)

            async def stream_unary_behavior(requests: Any, context: Context) -> Any:
                return await self._run_stream(
                    method, public, context, lambda: stream_unary(requests, context)
                )

            return grpc.stream_unary_rpc_method_handler(stream_unary_behavior, **codecs)
        inner = cast(
            Callable[..., Any], handler.stream_stream if handler.request_streaming else handler.unary_stream
        )

        async def streaming_behavior(request: Any, context: Context) -> None:
            await self._run_stream(method, public, context, lambda: _drive(inner, request, context))

        factory = (
            grpc.unary_stream_rpc_method_handler
            if not handler.request_streaming
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(streaming_behavior, **codecs)

    async def _run_stream(
        self,
        method: str,
        public: bool,
        context: Context,
        call: Callable[[], Awaitable[T]],
    ) -> T:
        self._observer.stream_opened(method)
        try:
            return await self._run(method, public, context, call, streaming=True)
        finally:
            self._observer.stream_closed(method)

    async def _run(
        self,
        method: str,
        public: bool,
        context: Context,
        call: Callable[[], Awaitable[T]],
        *,
        streaming: bool = False,
    ) -> T:
        started = time.perf_counter()
        principal: Principal | None = None
        code = grpc.StatusCode.OK
        reason: str | None = None  # the ErrorInfo reason of a domain error, for the log line
        try:
            if not public:
                principal = self._authenticate(context)
            set_principal(principal)
            if streaming:
                return await self._streams.run(call, principal)
            return await call()
        except errors.SendInChatError as exc:
            code = status.code_of(exc)
            reason = getattr(exc, "reason", None)
            await _abort_with(context, status.to_status(exc))
            raise  # unreachable: abort raises AbortError
        except grpc.aio.AbortError:
            code = _code_after_abort(context)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except _RETRYABLE_ERRORS:
            code = grpc.StatusCode.ABORTED
            await context.abort(code, "the request conflicted with a concurrent one; retry it")
            raise
        except _UNAVAILABLE_ERRORS:
            log.warning("database unavailable during %s", method, exc_info=True)
            code = grpc.StatusCode.UNAVAILABLE
            await context.abort(code, "the database is unavailable; retry later")
            raise
        except Exception:
            correlation_id = uuid.uuid4().hex
            log.exception("unexpected error in %s (correlation id %s)", method, correlation_id)
            code = grpc.StatusCode.INTERNAL
            await _abort_with(context, status.internal_status(correlation_id))
            raise
        finally:
            self._observer.record(
                method=method,
                code=code,
                seconds=time.perf_counter() - started,
                user_id=None if principal is None else principal.user_id,
                peer=context.peer(),
                reason=reason,
            )

    def _authenticate(self, context: Context) -> Principal:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise errors.UnauthenticatedError(
                        "authorization metadata must be 'Bearer <access token>'"
                    )
                principal = self._tokens.verify_access(token.strip())
                if principal.session_id in self._ended_sessions:
                    raise errors.UnauthenticatedError(_SESSION_ENDED, reason="SESSION_ENDED")
                if not self._ended_sessions.current:
                    raise errors.UnavailableError(
                        "cannot confirm that this session is still open (the database does not answer);"
                        " retry later"
                    )
                return principal
        raise errors.UnauthenticatedError(
            "missing 'authorization: Bearer <access token>' metadata", reason="TOKEN_MISSING"
        )


async def _drive(inner: Callable[..., Any], request: Any, context: Context) -> None:
    """Run a response-streaming handler of either shape (async generator, or read/write coroutine)."""
    if inspect.isasyncgenfunction(inner):
        # aclosing: the generator's finally blocks run now, not whenever it is collected.
        async with contextlib.aclosing(inner(request, context)) as responses:
            async for response in responses:
                await context.write(response)
    else:
        await inner(request, context)


async def _abort_with(context: Context, rpc_status: grpc.Status) -> None:
    await context.abort(rpc_status.code, rpc_status.details, rpc_status.trailing_metadata)


def _code_after_abort(context: Context) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN
