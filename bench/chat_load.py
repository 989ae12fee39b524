"""The chat bench's load generator: subscriber streams, fixed-rate steps, the ramp to the sustained rate.

One method for every server it measures (the real one and the floor, bench/chat_floor.py): a
sender calls ChatService.SendMessage at a fixed rate, each message's text starts with its send
time (time.perf_counter(), one clock for the whole machine), and every subscriber's Connect
stream records send-to-receipt time. A step is `seconds` of sending at one rate, then up to 5 s
for the last deliveries; the ramp raises the rate until a step misses (p99 over the bound, or
deliveries missing) twice in a row at one rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import server_pids
from sendinchat.v1 import chat_pb2, users_pb2

Send = Callable[[chat_pb2.SendMessageRequest], Awaitable[Any]]
_TICKS = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password-123"


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of seconds, in ms (inf when there are none)."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata of an authenticated call."""
    return (("authorization", f"Bearer {token}"),)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a server, its workers included (Linux /proc)."""
    total = 0.0
    for one in server_pids(pid):
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{one}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


async def register(stub: Any, count: int, tag: str) -> list[users_pb2.LoginResponse]:
    """`count` new users, logged in (50 at a time)."""

    async def one(i: int) -> users_pb2.LoginResponse:
        name = f"chat_{tag}_{i}"
        await stub.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
        reply: users_pb2.LoginResponse = await stub.Login(
            users_pb2.LoginRequest(username=name, password=PASSWORD)
        )
        return reply

    replies: list[users_pb2.LoginResponse] = []
    for start in range(0, count, 50):
        replies += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))
    return replies


async def create_room(
    chat: Any, owner: users_pb2.LoginResponse, members: list[users_pb2.LoginResponse]
) -> str:
    """A group room of the owner and (at most 100) members."""
    request = chat_pb2.CreateRoomRequest(
        kind=chat_pb2.ROOM_KIND_GROUP, name="bench", member_user_ids=[p.user.id for p in members]
    )
    reply = await chat.CreateRoom(request, metadata=auth(owner.tokens.access_token))
    return str(reply.room.id)


@dataclass
class Step:
    """One fixed-rate run."""

    rate: float
    sent: int = 0
    expected: int = 0
    latencies: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)
    server_cores: float = 0.0
    client_cores: float = 0.0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, seconds: float) -> None:
        """One delivery's latency."""
        self.latencies.append(seconds)
        if self.expected and len(self.latencies) >= self.expected:
            self.all_in.set()

    @property
    def delivered(self) -> int:
        """Messages received by all subscribers together."""
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        """Send-to-receipt latency percentile in ms (inf when nothing arrived)."""
        return percentile(self.latencies, q)

    def commit_percentile(self, q: float) -> float:
        """SendMessage round-trip percentile in ms (real server: store and commit), part of the above."""
        return percentile(self.commits, q)

    def within(self, bound_ms: float) -> bool:
        """Everything delivered and p99 within the bound."""
        return self.delivered >= self.expected and self.percentile(0.99) <= bound_ms


class Subscriber:
    """One Connect stream that records the latency of every message it receives."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.call = stub.Connect(metadata=metadata)
        self.sink: Step | None = None
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def subscribe(self, room_id: str) -> None:
        """Subscribe from the newest message on; returns once the server says subscribed."""
        frame = chat_pb2.SubscribeFrame(room_id=room_id, after_sequence=-1)
        try:
            await self.call.write(chat_pb2.ConnectRequest(subscribe=frame))
        except asyncio.InvalidStateError:
            code, details = await self.call.code(), await self.call.details()
            raise SystemExit(f"a stream ended before it subscribed: {code} {details}") from None
        await asyncio.wait_for(self.ready.wait(), 120)

    async def _read(self) -> None:
        try:
            async for frame in self.call:
                kind = frame.WhichOneof("event")
                if kind == "message":
                    if self.sink is not None:
                        sent = float(frame.message.text.partition(" ")[0])
                        self.sink.record(time.perf_counter() - sent)
                elif kind == "subscribed":
                    self.ready.set()
                elif kind == "error":
                    print(f"  subscriber got an error frame: {frame.error}", file=sys.stderr)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                print(f"  subscriber stream ended: {exc.code().name} {exc.details()}", file=sys.stderr)

    async def close(self) -> None:
        """Cancel the stream."""
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def subscribe_all(subs: list[Subscriber], room_id: str | list[str]) -> None:
    """Subscribe every stream (to one room, or each to its own), 100 at a time."""
    rooms = [room_id] * len(subs) if isinstance(room_id, str) else room_id
    for start in range(0, len(subs), 100):
        await asyncio.gather(
            *(
                s.subscribe(r)
                for s, r in zip(subs[start : start + 100], rooms[start : start + 100], strict=True)
            )
        )


@dataclass
class Target:
    """A server under load: how to send to its room, its streams, its process."""

    name: str
    send: Send
    room_id: str
    subscribers: list[Subscriber]
    pid: int


async def run_step(target: Target, rate: float, seconds: float) -> Step:
    """Send at `rate` for `seconds`; wait up to 5 s more for every delivery."""
    count = int(rate * seconds)
    subs = target.subscribers
    step = Step(rate, sent=count, expected=count * len(subs))
    for sub in subs:
        sub.sink = step
    pending: set[asyncio.Task[Any]] = set()

    async def send(request: chat_pb2.SendMessageRequest) -> None:
        began = time.perf_counter()
        await target.send(request)
        step.commits.append(time.perf_counter() - began)

    cpu_before, own_before, started = cpu_seconds(target.pid), time.process_time(), time.perf_counter()
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = chat_pb2.SendMessageRequest(room_id=target.room_id, text=f"{time.perf_counter():.6f} m{i}")
        task = asyncio.create_task(send(request))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(step.all_in.wait(), 5)
    elapsed = time.perf_counter() - started
    step.server_cores = (cpu_seconds(target.pid) - cpu_before) / elapsed
    step.client_cores = (time.process_time() - own_before) / elapsed
    for sub in subs:
        sub.sink = None
    return step


async def ramp(target: Target, rates: list[float], seconds: float, bound_ms: float) -> list[Step]:
    """Steps at rising rates until one rate misses the bound twice (the shared machine gets a retry)."""
    steps: list[Step] = []
    for rate in rates:
        for _ in range(2):
            step = await run_step(target, rate, seconds)
            steps.append(step)
            print_step(f"{target.name} ramp", step)
            if step.within(bound_ms):
                break
        if not step.within(bound_ms):
            break
    return steps


def sustained(steps: list[Step], bound_ms: float) -> Step | None:
    """The fastest step within the bound (its rate is the sustained rate), or None."""
    return max((s for s in steps if s.within(bound_ms)), key=lambda s: s.rate, default=None)


def print_step(what: str, step: Step) -> None:
    """One line per step on stderr, as it happens."""
    print(
        f"  {what:<12} {step.rate:6.0f} msg/s -> {step.delivered:6d}/{step.expected:<6d} deliveries,"
        f" p50 {step.percentile(0.5):7.1f} ms, p99 {step.percentile(0.99):7.1f} ms"
        f" (SendMessage p99 {step.commit_percentile(0.99):6.1f} ms),"
        f" server {step.server_cores:.2f} cores, load generator {step.client_cores:.2f}",
        file=sys.stderr,
    )
