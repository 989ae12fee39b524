"""A bank and chat load that survives a failover: every request retried with its id until answered.

Transfer clients send CreateTransfer to random users and retry each request with the same
request_id after UNAVAILABLE, ABORTED or a missed deadline (the outcome is unknown, so only the
same id is safe), until a definite answer. A chat sender does the same with Connect send frames
and their client_message_id; a chat receiver follows the room and resubscribes from the last
sequence it saw whenever its stream ends. Each keeps what it was told, and anything it was not
expected to hear (INTERNAL above all) is listed in `Load.unexpected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from sendinchat.v1 import chat_pb2, ledger_pb2
from tests.chat.support import Stream
from tests.helpers import Account, request_id

RETRY_SECONDS = 0.05
ATTEMPT_TIMEOUT_SECONDS = 5.0
# Answers after which the same request is sent again: the database was away, or the call's fate is unknown.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
_RETRYABLE_FRAME = {chat_pb2.ERROR_CODE_UNAVAILABLE, chat_pb2.ERROR_CODE_ABORTED}


@dataclass
class Load:
    """What every client was told, shared by all of them."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    give_up_at: float = float("inf")  # monotonic time after which a request still unanswered is a failure
    answers: Counter[str] = field(default_factory=Counter)  # every answer, by code name
    unexpected: list[str] = field(default_factory=list)
    transfers: dict[str, ledger_pb2.Transfer] = field(default_factory=dict)  # request_id -> transfer
    transfer_acks: list[float] = field(default_factory=list)  # monotonic time of each acknowledgement
    messages: dict[str, int] = field(default_factory=dict)  # client_message_id -> sequence
    received: list[chat_pb2.Message] = field(default_factory=list)  # what the receiver got, in order

    def acked_since(self, moment: float) -> int:
        """Transfers acknowledged after `moment`."""
        return sum(1 for at in self.transfer_acks if at > moment)

    def answered(self, name: str) -> None:
        """Count one answer (a status code's name, or a stream's end)."""
        self.answers[name] += 1

    def too_late(self, what: str) -> bool:
        """True once `give_up_at` has passed: `what` is then recorded as never answered."""
        if time.monotonic() < self.give_up_at:
            return False
        self.unexpected.append(f"{what}: still unanswered when the test gave up")
        return True


async def transfer_client(load: Load, stubs: Any, users: list[Account], seed: int) -> None:
    """Random transfers between `users` until `load.stop`, each retried until it has an answer."""
    rng = random.Random(seed)
    while not load.stop.is_set():
        sender, recipient = rng.sample(users, 2)
        request = ledger_pb2.CreateTransferRequest(
            request_id=request_id(),
            to_user_id=recipient.id,
            currency="USD",
            amount_minor=rng.randrange(1, 100),
        )
        while not load.too_late(f"transfer {request.request_id}"):
            try:
                reply = await stubs.ledger.CreateTransfer(
                    request, metadata=sender.auth, timeout=ATTEMPT_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as err:
                load.answered(err.code().name)
                if err.code() in _RETRYABLE:
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                load.unexpected.append(f"CreateTransfer: {err.code().name} {err.details()}")
                break
            load.answered("OK")
            previous = load.transfers.setdefault(request.request_id, reply.transfer)
            if previous.id != reply.transfer.id:
                load.unexpected.append(f"request {request.request_id} got two transfers")
            load.transfer_acks.append(time.monotonic())
            break


async def chat_sender(load: Load, stubs: Any, account: Account, room_id: str) -> None:
    """Messages over Connect until `load.stop`, each sent again with its client_message_id until acked."""
    stream: Stream | None = None
    number = 0
    try:
        while not load.stop.is_set():
            number += 1
            client_message_id = f"failover-{number}"
            send = chat_pb2.SendFrame(client_message_id=client_message_id, room_id=room_id, text=f"n{number}")
            while not load.too_late(f"message {client_message_id}"):
                if stream is None or stream.ended.is_set():
                    if stream is not None:
                        _check_stream_end(load, stream, "sender")
                        await stream.close()
                    stream = Stream(stubs, account)
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await stream.write(send=send)
                frame = await _next_frame(
                    stream, functools.partial(_answers, client_message_id=client_message_id)
                )
                if frame is None:  # the stream ended (or went quiet): a new one, the same frame
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if frame.WhichOneof("event") == "ack":
                    load.answered("OK")
                    load.messages[client_message_id] = frame.ack.sequence
                    break
                load.answered(chat_pb2.ErrorCode.Name(frame.error.code))
                if frame.error.code not in _RETRYABLE_FRAME:
                    load.unexpected.append(f"send frame: {chat_pb2.ErrorCode.Name(frame.error.code)}")
                    break
                await asyncio.sleep(RETRY_SECONDS)
    finally:
        if stream is not None:
            await stream.close()


async def chat_receiver(
    load: Load, stubs: Any, account: Account, room_id: str, done: Callable[[], bool]
) -> None:
    """Follow the room until `done()`, resubscribing from the last sequence seen when the stream ends."""
    last = 0
    while not done():
        stream = Stream(stubs, account)
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=room_id, after_sequence=last))
            while not done():
                frame = await _next_frame(stream, lambda f: f.WhichOneof("event") in ("message", "error"))
                if frame is None:
                    if stream.ended.is_set():
                        _check_stream_end(load, stream, "receiver")
                        break
                    continue
                if frame.WhichOneof("event") == "error":
                    if frame.error.code not in _RETRYABLE_FRAME:
                        load.unexpected.append(f"receiver: {chat_pb2.ErrorCode.Name(frame.error.code)}")
                    break  # resubscribe on a new stream
                message = frame.message
                if message.sequence != last + 1:
                    load.unexpected.append(f"receiver: sequence {message.sequence} after {last}")
                load.received.append(message)
                last = max(last, message.sequence)
        finally:
            await stream.close()
        await asyncio.sleep(RETRY_SECONDS)


def _answers(frame: chat_pb2.ConnectResponse, *, client_message_id: str) -> bool:
    event = frame.WhichOneof("event")
    if event == "ack":
        return frame.ack.client_message_id == client_message_id
    return event == "error" and frame.error.client_message_id == client_message_id


async def _next_frame(
    stream: Stream, wanted: Callable[[chat_pb2.ConnectResponse], bool]
) -> chat_pb2.ConnectResponse | None:
    """The next wanted frame, or None once the stream has ended or stayed silent too long."""
    deadline = time.monotonic() + ATTEMPT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if stream.ended.is_set() and stream.frames.empty():
            return None
        try:
            frame = await asyncio.wait_for(stream.frames.get(), 0.1)
        except TimeoutError:
            continue
        if wanted(frame):
            return frame
    return None


def _check_stream_end(load: Load, stream: Stream, who: str) -> None:
    code = stream.error.code() if stream.error is not None else grpc.StatusCode.OK
    load.answered(f"stream {code.name}")
    if code not in _RETRYABLE and code != grpc.StatusCode.OK:
        load.unexpected.append(f"{who}: the stream ended with {code.name}")


@dataclass
class HealthWatch:
    """Polls grpc.health.v1 Check and keeps each change of status with its monotonic time."""

    stubs: Any
    changes: list[tuple[float, int]] = field(default_factory=list)

    async def run(self) -> None:
        """Poll every 20 ms until cancelled."""
        while True:
            try:
                reply = await self.stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                status = int(reply.status)
            except grpc.aio.AioRpcError:
                status = -1
            if not self.changes or self.changes[-1][1] != status:
                self.changes.append((time.monotonic(), status))
            await asyncio.sleep(0.02)

    async def wait_for(self, status: int, *, after: float, seconds: float) -> float:
        """The first time after `after` that health was `status`; TimeoutError after `seconds`."""
        async with asyncio.timeout(seconds):
            while True:
                for at, seen in self.changes:
                    if seen == status and at >= after:
                        return at
                if self.changes and self.changes[-1][1] == status:
                    return max(after, self.changes[-1][0])
                await asyncio.sleep(0.01)
