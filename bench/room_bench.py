"""One busy room: SendMessage from N concurrent senders into one group room, beside Health/Check.

    .venv/bin/python -m bench.room_bench        # about 1.5 minutes: 1, 4, 16, 64 senders, 3 rounds of 5 s
    .venv/bin/python -m bench.room_bench --load  # the same beside one CPU-burning process per core

It starts an embedded PostgreSQL (its own data folder) and the real server as a subprocess
(`python -m server`, uvloop, log level WARNING), registers 64 users in one group room, and for
each concurrency N runs `--rounds` rounds of: N closed-loop callers (the room's members in turn)
calling SendMessage, then N closed-loop callers of Health/Check (the gRPC floor at that
concurrency), `--seconds` each. A room's writers hold its lock until they commit, so without
group commit (server/chat/sending.py) a room stores one message per commit. Nothing subscribes.
Prints messages/s with p50/p99 and Health/Check/s (medians of the rounds), the conditions and an
fdatasync probe of PostgreSQL's folder. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.chat_load import auth, create_room, percentile, register
from bench.common import (
    REPO,
    Conditions,
    add_load_argument,
    cpu_burners,
    free_port,
    fsync_probe,
    health_rate,
    machine_line,
    open_channel,
    server_env,
    wait_serving,
)
from sendinchat.v1 import chat_pb2, chat_pb2_grpc, users_pb2_grpc

USERS = 64
# One round at one concurrency: messages/s, p50 ms, p99 ms, Health/Check/s.
Round = tuple[float, float, float, float]


async def _send_for(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, room: str, tokens: list[str], callers: int, seconds: float
) -> tuple[float, list[float]]:
    """Messages/s and every call's latency (s) of `callers` closed-loop senders."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(token: str) -> None:
        metadata = auth(token)
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            await chat.SendMessage(chat_pb2.SendMessageRequest(room_id=room, text="busy"), metadata=metadata)
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(caller(tokens[i % len(tokens)]) for i in range(callers)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def _measure(address: str, args: argparse.Namespace) -> list[tuple[int, list[Round]]]:
    """Each concurrency with its rounds."""
    async with open_channel(address) as channel:
        users = await register(users_pb2_grpc.UserServiceStub(channel), USERS, uuid.uuid4().hex[:6])
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        room = await create_room(chat, users[0], users[1:])
        tokens = [user.tokens.access_token for user in users]
        await _send_for(chat, room, tokens, 4, 1.0)  # warm-up
        figures: list[tuple[int, list[Round]]] = []
        for callers in args.concurrency:
            rounds: list[Round] = []
            for _ in range(args.rounds):
                rate, latencies = await _send_for(chat, room, tokens, callers, args.seconds)
                health = await health_rate(address, seconds=args.seconds, callers=callers)
                rounds.append((rate, percentile(latencies, 0.5), percentile(latencies, 0.99), health))
                print(
                    f"  {callers:3d} senders: {rate:7.0f} msg/s, p50 {rounds[-1][1]:6.1f} ms,"
                    f" p99 {rounds[-1][2]:6.1f} ms; Health/Check {health:6.0f}/s",
                    flush=True,
                )
            figures.append((callers, rounds))
        return figures


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    add_load_argument(parser)
    args = parser.parse_args(argv)

    import uvloop

    from server.db.embedded import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="sendinchat-room-bench-"))
    pg = EmbeddedPostgres(data_dir)
    try:
        dsn = asyncio.run(pg.ensure_database(f"room_bench_{uuid.uuid4().hex[:6]}"))
        address = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=server_env(dsn, address))
        try:
            wait_serving(address)
            with cpu_burners(args.load):
                started = Conditions.now()
                disk_before = fsync_probe(data_dir)
                figures = uvloop.run(_measure(address, args))
                disk_after = fsync_probe(data_dir)
                ended = Conditions.now()
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    print()
    print("SendInChat busy-room benchmark: SendMessage into one group room, nobody subscribed")
    print(f"  from:  {started}")
    print(f"  until: {ended}")
    load = f"{args.load} CPU-burning processes (--load)" if args.load else "no added load"
    print(f"  machine: {machine_line()}; {load}; server, PostgreSQL and this load generator on it")
    print(f"  disk (PostgreSQL's folder), before: {disk_before}; after: {disk_after}")
    print(f"  each figure: median of {args.rounds} interleaved rounds of {args.seconds:g} s; {USERS} members")
    print()
    print("senders | messages/s  p50 ms  p99 ms | Health/Check/s | ÷ Health")
    for callers, rounds in figures:
        rate, p50, p99, health = (statistics.median(r[i] for r in rounds) for i in range(4))
        print(f"{callers:7d} | {rate:10.0f} {p50:7.1f} {p99:7.1f} | {health:14.0f} | {rate / health:8.2f}")


if __name__ == "__main__":
    main()
