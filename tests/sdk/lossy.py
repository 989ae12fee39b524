"""A TCP proxy in front of a test server that loses what a flaky network loses: answers, connections.

It reads the HTTP/2 frames the server sends, so it can drop a connection at the exact moment a
call's trailers arrive: the server has finished the call (the money has moved) and the client
never hears of it, which is when a client must retry with the same request_id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine

_FRAME_HEADER = 9
_HEADERS = 0x1
_END_STREAM = 0x1


class LossyProxy:
    """Forwards 127.0.0.1:port to a server; `lose_next_answer()` and `drop()` break connections."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lose_answer = False
        self.refusing = False  # while set, a new connection is closed at once, as by a server that is down
        self._flowing = asyncio.Event()  # cleared by stall(): nothing the server sends gets through
        self._flowing.set()
        self.lost_answers = 0
        self.accepted = 0
        self.address = ""

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def lose_next_answer(self) -> None:
        """The next call to finish on the server is never answered: its connection drops instead."""
        self._lose_answer = True

    def stall(self, stalled: bool = True) -> None:
        """While stalled, what the server sends is held back (calls hang); False lets it through."""
        if stalled:
            self._flowing.clear()
        else:
            self._flowing.set()

    def drop(self) -> None:
        """Abort every open connection (new ones still get through)."""
        for client, upstream in list(self._connections):
            client.transport.abort()
            upstream.transport.abort()

    async def close(self) -> None:
        """Stop listening and drop everything."""
        if self._server is not None:
            self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.transport.abort()
            return
        self.accepted += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        pair = (client_writer, upstream_writer)
        self._connections.add(pair)
        pipes = (self._pipe(client_reader, upstream_writer), self._answers(upstream_reader, client_writer))
        for pipe in pipes:
            task = asyncio.create_task(self._until_closed(pipe, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _until_closed(
        self, pipe: Coroutine[object, object, None], pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    ) -> None:
        try:
            await pipe
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(pair)
            for writer in pair:
                with contextlib.suppress(Exception):
                    writer.transport.abort()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()

    async def _answers(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Forward the server's frames one by one, watching for the trailers that end a call."""
        while True:
            header = await source.readexactly(_FRAME_HEADER)
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            payload = await source.readexactly(length)
            await self._flowing.wait()
            if self._lose_answer and kind == _HEADERS and flags & _END_STREAM and stream_id:
                self._lose_answer = False
                self.lost_answers += 1
                return  # _until_closed aborts both sides: the client sees UNAVAILABLE
            sink.write(header + payload)
            await sink.drain()


@contextlib.asynccontextmanager
async def proxied(target: str) -> AsyncIterator[LossyProxy]:
    """A started LossyProxy in front of `target`, closed when the block ends."""
    proxy = LossyProxy(target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
