"""The chat bench's memory figure: server RSS before and after K idle, subscribed Connect streams.

On the real server the streams belong to users of their own (at most MAX_STREAMS_PER_USER - 7 a
user, 100 users a room), each subscribed to its user's room; on the floor (bench/chat_floor.py)
the same number of streams subscribe to one room. The streams come over connections of their own,
_STREAMS_PER_CONNECTION each, as many clients' would (the server takes at most
server.app.MAX_STREAMS_PER_CONNECTION a connection). The RSS is read 3 s after the last
subscription was answered, the servers' workers included.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.chat_load import Subscriber, auth, create_room, register, subscribe_all
from bench.common import open_channel, server_pids
from sendinchat.v1 import chat_pb2_grpc
from server.streams import MAX_STREAMS_PER_USER

_STREAMS_PER_USER = MAX_STREAMS_PER_USER - 7
_USERS_PER_ROOM = 100
_STREAMS_PER_CONNECTION = 500


def rss_mb(pid: int) -> float:
    """VmRSS of a server, its workers included."""
    total = 0.0
    for one in server_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


async def _hold(pid: int, open_one: Callable[[int], Subscriber], rooms: list[str]) -> tuple[float, float]:
    # Streams are opened 100 at a time: thousands started at once on one connection make gRPC's
    # server end the connection (GOAWAY, every call CANCELLED).
    before = rss_mb(pid)
    subs: list[Subscriber] = []
    for start in range(0, len(rooms), 100):
        batch = [open_one(i) for i in range(start, min(len(rooms), start + 100))]
        await subscribe_all(batch, rooms[start : start + 100])
        subs += batch
    await asyncio.sleep(3)
    after = rss_mb(pid)
    for sub in subs:
        await sub.close()
    await asyncio.sleep(1)
    return before, after


async def measure_idle_streams(
    count: int, users_stub: Any, addresses: tuple[str, str], pid: int, floor_pid: int
) -> dict[str, float]:
    """RSS of both servers (real, floor) before and after `count` idle subscribed streams, one at a time."""
    connections = math.ceil(count / _STREAMS_PER_CONNECTION)
    channels = [
        open_channel(address, own_connection=True) for address in addresses for _ in range(connections)
    ]
    try:
        chats = [chat_pb2_grpc.ChatServiceStub(c) for c in channels[:connections]]
        floor_chats = [chat_pb2_grpc.ChatServiceStub(c) for c in channels[connections:]]
        return await _measure(count, users_stub, chats, floor_chats, pid, floor_pid)
    finally:
        for channel in channels:
            await channel.close(None)


async def _measure(
    count: int, users_stub: Any, chats: list[Any], floor_chats: list[Any], pid: int, floor_pid: int
) -> dict[str, float]:
    people = await register(users_stub, math.ceil(count / _STREAMS_PER_USER), f"idle{uuid.uuid4().hex[:6]}")
    room_of: dict[str, str] = {}
    for start in range(0, len(people), _USERS_PER_ROOM):
        group = people[start : start + _USERS_PER_ROOM]
        room_id = await create_room(chats[0], group[0], group[1:])
        for person in group:
            room_of[person.user.id] = room_id
    owners = [people[i // _STREAMS_PER_USER] for i in range(count)]

    def real_stream(i: int) -> Subscriber:
        return Subscriber(chats[i % len(chats)], auth(owners[i].tokens.access_token))

    real_before, real_after = await _hold(pid, real_stream, [room_of[p.user.id] for p in owners])
    print(f"  {count} idle streams: server RSS {real_before:.0f} -> {real_after:.0f} MB", file=sys.stderr)

    def floor_stream(i: int) -> Subscriber:
        return Subscriber(floor_chats[i % len(floor_chats)])

    floor_before, floor_after = await _hold(floor_pid, floor_stream, [str(uuid.uuid4())] * count)
    print(f"  {count} idle streams: floor RSS {floor_before:.0f} -> {floor_after:.0f} MB", file=sys.stderr)
    return {
        "real_before": real_before,
        "real_after": real_after,
        "real_per_stream_kb": (real_after - real_before) * 1024 / max(1, count),
        "floor_before": floor_before,
        "floor_after": floor_after,
    }
