"""A bare gRPC server with the real interceptor and one client-streaming method (the contract has none)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.auth.principal import Role
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.bootstrap import token_codec
from server.interceptor import RpcInterceptor
from server.observability import Metrics, RpcObserver
from server.streams import StreamLifetimes
from tests.harness import TEST_CONFIG, TEST_JWT_SECRET

COLLECT = "/test.Probe/Collect"


def codec() -> TokenCodec:
    """The token codec the probe server trusts: the test servers' own."""
    return token_codec(TEST_CONFIG, TEST_JWT_SECRET)


def access_token() -> str:
    """A valid access token for the probe server."""
    return (
        codec()
        .issue_access(
            user_id="00000000-0000-4000-8000-000000000001",
            role=Role.USER,
            session_id="00000000-0000-4000-8000-000000000002",
        )
        .token
    )


@contextlib.asynccontextmanager
async def probe_server(ended_sessions: EndedSessions) -> AsyncIterator[tuple[grpc.aio.Channel, list[bytes]]]:
    """A channel to the probe server, and the list of what its handler read."""
    received: list[bytes] = []

    async def collect(requests: Any, context: Any) -> bytes:
        async for request in requests:
            received.append(request)
        return b"done"

    interceptor = RpcInterceptor(
        tokens=codec(),
        ended_sessions=ended_sessions,
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
