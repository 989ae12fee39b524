"""The chat fan-out's floor: a bare grpc.aio ChatService with no database and no auth.

    .venv/bin/python -m bench.chat_floor 127.0.0.1:50123  # serves until SIGTERM; the chat bench starts it

It implements two RPCs of the generated ChatService, as cheaply as grpc.aio allows, so that what
the chat bench measures against it is the cost of fanning a frame out over this stack and nothing
else:

- `Connect`: a subscribe frame is answered with a `subscribed` event, and from then on the stream
  gets every frame sent (each stream has an unbounded queue and a loop writing it);
- `SendMessage` (the trigger, a unary RPC as on the real server): builds the ConnectResponse the
  real server would (message with room, sequence, sender, kind, text, time), serializes it once,
  hands the bytes to every stream's queue and answers an empty SendMessageResponse at once.

Connect's response serializer passes bytes through (the frame is serialized once, not once per
stream). Like the real server: a subprocess, uvloop, SCHED_BATCH for its threads where Linux has it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from sendinchat.v1 import chat_pb2

_SERVICE = "sendinchat.v1.ChatService"


def _pass_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else bytes(frame.SerializeToString())


class FloorChat:
    """Connect streams and the SendMessage trigger that fans a frame out to all of them."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes]] = set()
        self._sequence = 0

    async def connect(self, requests: AsyncIterator[chat_pb2.ConnectRequest], context: Any) -> None:
        """ChatService.Connect: subscribe frames are answered, then every frame sent is written."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                if request.WhichOneof("frame") == "subscribe":
                    subscribed = chat_pb2.SubscribedEvent(
                        room_id=request.subscribe.room_id, last_sequence=self._sequence
                    )
                    queue.put_nowait(chat_pb2.ConnectResponse(subscribed=subscribed).SerializeToString())
                    self._queues.add(queue)

        reader = asyncio.create_task(read())
        try:
            while True:
                await context.write(await queue.get())
        finally:
            self._queues.discard(queue)
            reader.cancel()

    async def send_message(
        self, request: chat_pb2.SendMessageRequest, context: Any
    ) -> chat_pb2.SendMessageResponse:
        """ChatService.SendMessage: one frame, serialized once, to every stream."""
        self._sequence += 1
        created = Timestamp()
        created.FromNanoseconds(time.time_ns())
        message = chat_pb2.Message(
            room_id=request.room_id,
            sequence=self._sequence,
            sender_user_id=request.room_id,  # a UUID's worth of bytes, as on the real server
            client_message_id=request.client_message_id,
            kind=chat_pb2.MESSAGE_KIND_TEXT,
            text=request.text,
            create_time=created,
        )
        frame = chat_pb2.ConnectResponse(message=message).SerializeToString()
        for queue in self._queues:
            queue.put_nowait(frame)
        return chat_pb2.SendMessageResponse()


async def serve(address: str) -> None:
    """Serve the floor on `address` until SIGTERM; prints one line to stdout once it listens."""
    floor = FloorChat()
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            floor.connect,
            request_deserializer=chat_pb2.ConnectRequest.FromString,
            response_serializer=_pass_bytes,
        ),
        "SendMessage": grpc.unary_unary_rpc_method_handler(
            floor.send_message,
            request_deserializer=chat_pb2.SendMessageRequest.FromString,
            response_serializer=chat_pb2.SendMessageResponse.SerializeToString,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"floor serving on {address}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    """`.venv/bin/python -m bench.chat_floor ADDRESS`."""
    import uvloop

    from server.scheduling import use_batch_scheduling

    use_batch_scheduling()
    uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
