"""The ErrorEvent frames of a Connect stream: a frame that failed is answered as a unary RPC would be."""

from __future__ import annotations

import logging
import uuid

import grpc

from sendinchat.v1 import chat_pb2
from server import boundary, status
from server.db import errors as db_errors

_MAX_ECHO_CHARS = 64  # a UUID is 36, a client message id at most 64

log = logging.getLogger(__name__)


def answer(
    exc: Exception, request: chat_pb2.ConnectRequest | boundary.Unparsable
) -> chat_pb2.ConnectResponse:
    """The ErrorEvent answering a frame that failed: as a unary RPC would answer it, per frame."""
    error = db_errors.translate(exc)
    if error is None:
        correlation_id = uuid.uuid4().hex
        log.exception("unexpected error handling a Connect frame (correlation id %s)", correlation_id)
        return event(
            grpc.StatusCode.INTERNAL, f"internal error (correlation id {correlation_id})", **_about(request)
        )
    return event(status.code_of(error), error.message, reason=getattr(error, "reason", ""), **_about(request))


def _about(request: chat_pb2.ConnectRequest | boundary.Unparsable) -> dict[str, str]:
    """The room and client message id a frame names, echoed in its ErrorEvent."""
    if isinstance(request, boundary.Unparsable):
        return {}
    frame = request.WhichOneof("frame")
    if frame is None or frame == "ping":
        return {}
    body = getattr(request, frame)
    echoed = {"room_id": body.room_id, "client_message_id": body.client_message_id if frame == "send" else ""}
    # Only what could be a real id goes back: a hostile frame must not make its answer large.
    return {key: value if len(value) <= _MAX_ECHO_CHARS else "" for key, value in echoed.items()}


def event(
    code: grpc.StatusCode, message: str, *, room_id: str = "", client_message_id: str = "", reason: str = ""
) -> chat_pb2.ConnectResponse:
    """An ErrorEvent frame; the stream stays open."""
    error = chat_pb2.ErrorEvent(
        code=chat_pb2.ErrorCode.ValueType(code.value[0]),
        message=message,
        room_id=room_id,
        client_message_id=client_message_id,
        reason=reason,
    )
    return chat_pb2.ConnectResponse(error=error)
