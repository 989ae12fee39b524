"""What one peer can hold of the server: streams on a connection, and connections."""

from __future__ import annotations

import asyncio
import struct
import sys
import urllib.request
from pathlib import Path

import grpc

from sendinchat.v1 import users_pb2, users_pb2_grpc
from server.app import MAX_STREAMS_PER_CONNECTION
from tests.harness import TEST_JWT_SECRET
from tests.helpers import PASSWORD, random_name

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _ACK = 0x4, 0x1
_SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
_DESCRIPTORS = 400  # the server's limit in the flood test: 262 connections then (pool of 10)


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", 0) + payload


async def _server_settings(address: str) -> dict[int, int]:
    """The SETTINGS frame a new HTTP/2 connection gets from the server."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(_PREFACE + _frame(_SETTINGS, 0))
        while True:
            header = await asyncio.wait_for(reader.readexactly(9), 5)
            payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
            if header[3] == _SETTINGS and not header[4] & _ACK:
                return {
                    int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
                    for i in range(0, len(payload), 6)
                }
    finally:
        writer.close()


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends this connection within a few seconds (one it accepted, it keeps)."""
    try:
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def _descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


class TestConnectionLimits:
    async def test_a_connection_is_told_how_many_streams_it_may_open(self, server):
        # A client queues its calls past the limit; without one, a peer opened 400,000 streams that
        # were never answered (a unary call half-closed without its message) and grew the server by 1 GB.
        settings = await _server_settings(server.address)
        assert settings.get(_SETTINGS_MAX_CONCURRENT_STREAMS) == MAX_STREAMS_PER_CONNECTION

    async def test_a_flood_of_connections_leaves_descriptors_to_the_rest_of_the_server(
        self, servers, processes
    ):
        process = await processes.spawn(
            ["bash", "-c", f'ulimit -n {_DESCRIPTORS} && exec "{sys.executable}" -m server'],
            DATABASE_URL=await servers.database(),
            SENDINCHAT_JWT_SECRET=TEST_JWT_SECRET,
            SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0",
        )
        address = await process.wait_serving()
        metrics_port = await process.metrics_port()
        host, port = address.rsplit(":", 1)
        flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(_DESCRIPTORS + 50):  # each sends the preface, then holds its connection
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(_PREFACE + _frame(_SETTINGS, 0))
                flood.append((reader, writer))
            closed = sum(await asyncio.gather(*(_closed_by_server(reader) for reader, _ in flood)))
            assert closed >= 100, f"{closed} of {len(flood)} connections past the cap were closed"
            assert _descriptors(process.process.pid) < _DESCRIPTORS
            assert "sendinchat_rpcs_total" in await asyncio.to_thread(_scrape, metrics_port)
        finally:
            for _, writer in flood:
                writer.close()
        async with grpc.aio.insecure_channel(address) as channel:  # a new client, once they are gone
            reply = await users_pb2_grpc.UserServiceStub(channel).Register(
                users_pb2.RegisterRequest(username=random_name(), password=PASSWORD),
                timeout=30,
                wait_for_ready=True,
            )
        assert reply.user.id
        assert "File descriptor limit" not in process.stderr
