"""The auth trap of streaming RPCs: a client that opens a stream without a token and sends nothing.

Each stream must end with UNAUTHENTICATED on its own, before the handler reads anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sendinchat.v1 import chat_pb2, ledger_pb2
from tests.auth.probe import COLLECT, access_token, probe_server
from tests.helpers import bearer

READ_TIMEOUT = 10.0


class TestWatchTransfers:
    async def test_is_unauthenticated_when_opened_without_a_token(self, stubs):
        call = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), READ_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in (caught.value.details() or "")

    async def test_is_unauthenticated_when_opened_with_a_bad_token(self, stubs):
        call = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=bearer("x.y.z"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), READ_TIMEOUT)
        error = caught.value
        if error.code() == grpc.StatusCode.INTERNAL:
            # grpc-core's client, not the server: when our frame goes out after the server has
            # already ended the call, the client's failed send replaces the server's status.
            assert "SendMessageOperation" in (error.debug_error_string() or ""), error
        else:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED


class TestConnect:
    async def test_is_unauthenticated_when_opened_without_a_token_and_nothing_is_sent(self, stubs):
        call = stubs.chat.Connect()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(call.read(), READ_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await asyncio.wait_for(call.code(), READ_TIMEOUT) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            call.cancel()

    async def test_is_unauthenticated_when_opened_with_a_bad_token_and_a_frame_is_sent(self, stubs):
        call = stubs.chat.Connect(metadata=bearer("x.y.z"))
        # The server may already have ended the call.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(chat_pb2.ConnectRequest(ping=chat_pb2.PingFrame()))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), READ_TIMEOUT)
        error = caught.value
        if error.code() == grpc.StatusCode.INTERNAL:
            # grpc-core's client, not the server: when our frame goes out after the server has
            # already ended the call, the client's failed send replaces the server's status.
            assert "SendMessageOperation" in (error.debug_error_string() or ""), error
        else:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def probe(server: Any) -> AsyncIterator[tuple[grpc.aio.Channel, list[bytes]]]:
    """The probe server, trusting the ended-sessions list of a real server (polled, current)."""
    async with probe_server(server.running.ended_sessions) as channel_and_received:
        yield channel_and_received


class TestClientStreaming:
    async def test_is_unauthenticated_when_opened_without_a_token_and_nothing_is_sent(self, probe):
        channel, received = probe
        call = channel.stream_unary(COLLECT)()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(call, READ_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            call.cancel()
        assert received == []

    async def test_handler_reads_the_stream_when_the_token_is_valid(self, probe):
        channel, received = probe
        call = channel.stream_unary(COLLECT)(metadata=bearer(access_token()))
        await call.write(b"one")
        await call.done_writing()
        assert await asyncio.wait_for(call, READ_TIMEOUT) == b"done"
        assert received == [b"one"]
