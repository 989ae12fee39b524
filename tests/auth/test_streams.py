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
from server.auth.principal import Role
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.interceptor import RpcInterceptor, StreamLifetimes
from server.observability import Metrics, RpcObserver
from tests.harness import TEST_JWT_SECRET
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


_COLLECT = "/test.Probe/Collect"


def _codec() -> TokenCodec:
    return TokenCodec(
        secret=TEST_JWT_SECRET,
        issuer="sendinchat",
        audience="sendinchat",
        access_ttl_seconds=60,
        refresh_ttl_seconds=600,
    )


@pytest.fixture
async def probe_server() -> AsyncIterator[tuple[grpc.aio.Channel, list[bytes]]]:
    """A bare server with the real interceptor and one client-streaming method (the contract has none)."""
    received: list[bytes] = []

    async def collect(requests: Any, context: Any) -> bytes:
        async for request in requests:
            received.append(request)
        return b"done"

    interceptor = RpcInterceptor(
        tokens=_codec(),
        ended_sessions=EndedSessions(token_lifetime_seconds=60),
        observer=RpcObserver(Metrics()),
        streams=StreamLifetimes(),
    )
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Probe", {"Collect": grpc.stream_unary_rpc_method_handler(collect)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, received
    finally:
        await channel.close(None)
        await server.stop(None)


class TestClientStreaming:
    async def test_is_unauthenticated_when_opened_without_a_token_and_nothing_is_sent(self, probe_server):
        channel, received = probe_server
        call = channel.stream_unary(_COLLECT)()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(call, READ_TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            call.cancel()
        assert received == []

    async def test_handler_reads_the_stream_when_the_token_is_valid(self, probe_server):
        channel, received = probe_server
        token = _codec().issue_access(
            user_id="00000000-0000-4000-8000-000000000001",
            role=Role.USER,
            session_id="00000000-0000-4000-8000-000000000002",
        )
        call = channel.stream_unary(_COLLECT)(metadata=bearer(token.token))
        await call.write(b"one")
        await call.done_writing()
        assert await asyncio.wait_for(call, READ_TIMEOUT) == b"done"
        assert received == [b"one"]
