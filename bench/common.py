"""What both benchmarks need: a free local port, and waiting for a server to report SERVING."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, seconds: float = 60) -> None:
    """Block until grpc.health.v1 at address answers SERVING; exit the benchmark if it never does."""

    async def check() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs type it as sync
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if asyncio.run(check()):
                return
        except grpc.aio.AioRpcError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not become SERVING within {seconds:.0f} s")
