"""What both benchmarks need: a free local port, channels, the server's processes, waiting for SERVING."""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_channel(address: str, *, own_connection: bool = False) -> grpc.aio.Channel:
    """A channel to `address`.

    gRPC shares one TCP connection among the channels of a process that have the same target and
    arguments (its global subchannel pool). `own_connection` gives the channel a connection of its
    own, as a separate client would have: with SENDINCHAT_WORKERS the kernel spreads connections,
    not calls, over the workers.
    """
    options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    return grpc.aio.insecure_channel(address, options=options)


def server_pids(pid: int) -> list[int]:
    """The server process and its children (the workers when SENDINCHAT_WORKERS > 1); Linux /proc."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def wait_serving(address: str, seconds: float = 60, *, connections: int = 1) -> None:
    """Block until grpc.health.v1 at address answers SERVING on `connections` fresh connections.

    With several workers a few connections per worker make it likely that every one serves (the
    kernel hands connections only to workers that listen, and each says NOT_SERVING until ready).
    """

    async def check() -> bool:
        for _ in range(connections):
            async with open_channel(address, own_connection=True) as channel:
                health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs type it as sync
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
        return True

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if asyncio.run(check()):
                return
        except grpc.aio.AioRpcError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not become SERVING within {seconds:.0f} s")


def add_worker_arguments(parser: argparse.ArgumentParser, *, connections: str) -> None:
    """`--workers` (the server's SENDINCHAT_WORKERS) and `--connections` (what `connections` counts)."""
    parser.add_argument("--workers", type=int, default=1, help="server's SENDINCHAT_WORKERS")
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help=f"TCP connections {connections} (default: 1, or 4 per worker with --workers)",
    )


def resolve_connections(args: argparse.Namespace) -> None:
    """Fill in the default of `--connections`; several per worker, as the kernel spreads connections."""
    if args.connections is None:
        args.connections = 1 if args.workers == 1 else 4 * args.workers
