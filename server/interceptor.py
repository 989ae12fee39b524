"""The one server interceptor: authentication, the request's shape, error mapping, observation.

Each method's wrapped handler is built once and cached; per call it authenticates from the
`authorization` metadata (a valid access token of a session that has not ended), binds the
principal, checks the request's shape (server/boundary.py: a body that does not parse, NUL,
unknown enum numbers, invalid timestamps are INVALID_ARGUMENT), runs the real handler, turns domain
and database errors into statuses (server/status.py, server/db/errors.py) and anything else into
INTERNAL with a correlation id, and records one log line and metrics. Wrapped handlers keep the
kind of the real one, so a bidi client that opens a stream and waits is still refused before
anything is read; streams live as long as their token and session (server/streams.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

import grpc

from server import boundary, errors, status
from server.auth.principal import Principal, set_principal
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.db import errors as db_errors
from server.observability import RpcObserver
from server.streams import SESSION_ENDED, StreamLifetimes

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
# Request-streaming methods whose handler answers a bad frame itself and keeps the stream; any other
# ends with INVALID_ARGUMENT at the first frame that breaks the shape rules.
FRAMES_CHECKED_BY_HANDLER = frozenset({"/sendinchat.v1.ChatService/Connect"})
# How long ending a stream waits for its status to be taken (it is, at once, by a client reading).
_STATUS_WAIT_SECONDS = 1.0


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, request shape, error mapping, stream lifetimes and observation for every RPC."""

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
        deserialize = handler.request_deserializer
        codecs: dict[str, Any] = {
            "request_deserializer": None
            if deserialize is None
            else boundary.lenient(deserialize, _type_name(deserialize, method)),
            "response_serializer": _passing_bytes(handler.response_serializer)
            if handler.response_streaming
            else handler.response_serializer,
        }
        if not handler.request_streaming and not handler.response_streaming:
            unary_unary = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

            async def unary_unary_behavior(request: Any, context: Context) -> Any:
                return await self._run(
                    method, public, context, lambda: unary_unary(request, context), request
                )

            return grpc.unary_unary_rpc_method_handler(unary_unary_behavior, **codecs)
        if handler.request_streaming and not handler.response_streaming:
            stream_unary = cast(Callable[..., Awaitable[Any]], handler.stream_unary)

            async def stream_unary_behavior(requests: Any, context: Context) -> Any:
                frames = requests if method in FRAMES_CHECKED_BY_HANDLER else _checked_frames(requests)
                return await self._run(
                    method, public, context, lambda: stream_unary(frames, context), streaming=True
                )

            return grpc.stream_unary_rpc_method_handler(stream_unary_behavior, **codecs)
        inner = cast(
            Callable[..., Any], handler.stream_stream if handler.request_streaming else handler.unary_stream
        )
        # A single request (server streaming) is checked here; a stream's frames as they come, by
        # _checked_frames or by a handler that answers each frame itself.
        single = not handler.request_streaming
        per_frame = method in FRAMES_CHECKED_BY_HANDLER

        async def streaming_behavior(request: Any, context: Context) -> None:
            received = request if single or per_frame else _checked_frames(request)
            await self._run(
                method,
                public,
                context,
                lambda: _drive(inner, received, context),
                request if single else None,
                streaming=True,
            )

        factory = (
            grpc.unary_stream_rpc_method_handler
            if not handler.request_streaming
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(streaming_behavior, **codecs)

    async def _run(
        self,
        method: str,
        public: bool,
        context: Context,
        call: Callable[[], Awaitable[T]],
        request: Any = None,
        *,
        streaming: bool = False,
    ) -> T:
        started = time.perf_counter()
        principal: Principal | None = None
        code = grpc.StatusCode.OK
        reason = ""
        if streaming:
            self._observer.stream_opened(method)
        try:
            if not public:
                principal = self._authenticate(context)
            set_principal(principal)
            if request is not None:
                if isinstance(request, boundary.Unparsable):
                    raise request.error()
                boundary.check(request)
            if streaming:
                return await self._streams.run(call, principal)
            return await call()
        except grpc.aio.AbortError:
            code = _code_after_abort(context)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            error = db_errors.translate(exc)
            if error is not None and not isinstance(exc, errors.SendInChatError):
                _log_database_error(method, exc)
            rpc_status = status.to_status(error) if error is not None else _internal(method)
            code = rpc_status.code
            reason = getattr(error, "reason", "")
            ending = context.abort(rpc_status.code, rpc_status.details, rpc_status.trailing_metadata)
            if not streaming:
                await ending
            try:
                await asyncio.wait_for(ending, _STATUS_WAIT_SECONDS)
            except TimeoutError:
                # The client has stopped reading: the status waits in grpc core behind the frames
                # it has not read, and reaches it once it reads them. The handler does not wait
                # for that, or it would hold the call until the client reads or leaves.
                raise asyncio.CancelledError from None
            raise  # unreachable: abort raises AbortError
        finally:
            if streaming:
                self._observer.stream_closed(method)
            self._observer.record(
                method=method,
                code=code,
                reason=reason,
                seconds=time.perf_counter() - started,
                user_id=None if principal is None else principal.user_id,
                peer=context.peer(),
            )

    def _authenticate(self, context: Context) -> Principal:
        values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
        if not values:
            raise errors.UnauthenticatedError(
                "missing 'authorization: Bearer <access token>' metadata", reason="TOKEN_MISSING"
            )
        if len(values) > 1:
            # Which one a proxy or a client library meant cannot be known: neither is taken.
            raise errors.UnauthenticatedError(
                "send one 'authorization' metadata value, not several", reason="TOKEN_MISSING"
            )
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.UnauthenticatedError(
                "authorization metadata must be 'Bearer <access token>'", reason="TOKEN_MISSING"
            )
        principal = self._tokens.verify_access(token.strip())
        if principal.session_id in self._ended_sessions:
            raise errors.UnauthenticatedError(SESSION_ENDED, reason="SESSION_ENDED")
        if not self._ended_sessions.current:
            raise errors.UnavailableError(
                "cannot confirm that this session is still open (the database does not answer); retry later"
            )
        return principal


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A response serializer that also takes bytes, a message serialized already.

    A frame that a stream shares with many others (a live chat message) is serialized once, not
    once per stream.
    """
    if serialize is None:
        return None
    inner = serialize

    def serialize_or_pass(response: Any) -> bytes:
        return response if isinstance(response, bytes) else inner(response)

    return serialize_or_pass


def _type_name(deserialize: Callable[[bytes], Any], method: str) -> str:
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", method))


def _log_database_error(method: str, exc: BaseException) -> None:
    if db_errors.is_client_fault(exc):
        # The boundary let through a value the database refused: a gap to close in server/validation.py.
        log.error("the database refused a value of a %s request", method, exc_info=exc)
    elif db_errors.is_unavailable(exc):
        log.warning("database unavailable during %s: %r", method, exc)


def _internal(method: str) -> grpc.Status:
    correlation_id = uuid.uuid4().hex
    log.exception("unexpected error in %s (correlation id %s)", method, correlation_id)
    return status.internal_status(correlation_id)


async def _checked_frames(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, boundary.Unparsable):
            raise request.error()
        boundary.check(request)
        yield request


async def _drive(inner: Callable[..., Any], request: Any, context: Context) -> None:
    """Run a response-streaming handler of either shape (async generator, or read/write coroutine)."""
    if inspect.isasyncgenfunction(inner):
        # aclosing: the generator's finally blocks run now, not whenever it is collected.
        async with contextlib.aclosing(inner(request, context)) as responses:
            async for response in responses:
                await context.write(response)
    else:
        await inner(request, context)


def _code_after_abort(context: Context) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate
    return grpc.StatusCode.UNKNOWN
