"""Chat fan-out against its own floor: sustained deliveries/s, latency, and memory with idle streams.

    .venv/bin/python -m bench.chat_bench             # about 6 minutes
    .venv/bin/python -m bench.chat_bench --load      # the same with one CPU-burning process per core
    .venv/bin/python -m bench.chat_bench --rounds 1 --idle-streams 10000
    .venv/bin/python -m bench.chat_bench --workers 2 --connections 8  # 2 workers, 8 TCP connections

It starts an embedded PostgreSQL (its own data folder), the real server as a subprocess
(`python -m server`, uvloop, log level WARNING) and, beside it, the floor (bench/chat_floor.py: a
bare grpc.aio ChatService in a subprocess, uvloop, no database, no auth, whose SendMessage fans
the same ConnectResponse frame out to its Connect streams). This process is the load generator
(bench/chat_load.py; uvloop, generated async stubs). On each server it opens one sender and N
subscribers (on the real server each its own user and Connect stream in one group room; the
streams share a few HTTP/2 channels, by default over one TCP connection, `--connections` to
spread them), then:

1. latency on the real server: SendMessage at a fixed rate, send-to-receipt p50/p99 over all
   deliveries and SendMessage's own round trip (after a 2 s warm-up, the median of 3 runs);
2. sustained deliveries/s, floor and real server in alternating rounds (`--rounds`): the same
   ramp of rising rates on each, until p99 passes the bound or deliveries fall behind (twice in a
   row at one rate); the highest rate within the bound times the subscribers is the figure, and
   real ÷ floor is the ratio (the median of the rounds' and each round's own);
3. memory: VmRSS of the real server (with `--workers`, all of them) and of the floor before and
   after opening K idle, subscribed streams.

`--load [N]` runs N CPU-burning processes (one per core without N) for the whole run, so the ratio
can be taken on a loaded machine as well as a quiet one. The conditions (time, load average,
Linux PSI) are printed at the start and the end. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.chat_load import (
    Step,
    Subscriber,
    Target,
    auth,
    create_room,
    percentile,
    print_step,
    ramp,
    register,
    run_step,
    subscribe_all,
    sustained,
)
from bench.chat_memory import measure_idle_streams
from bench.common import (
    REPO,
    Conditions,
    add_load_argument,
    add_worker_arguments,
    cpu_burners,
    free_port,
    fsync_probe,
    health_rate,
    machine_line,
    open_channel,
    resolve_connections,
    server_env,
    wait_serving,
)
from sendinchat.v1 import chat_pb2, chat_pb2_grpc, users_pb2_grpc

CHANNELS = 4
# Each step 1.25x the one before: a ratio of two sustained rates is then good to about 25 %.
RATES = [round(40 * 1.25**k) for k in range(20)]  # 40, 50, 62, 78, 98, 122, 153, 191, 238, ...


def _channels(address: str, args: argparse.Namespace) -> list[Any]:
    # One connection: CHANNELS channels that gRPC multiplexes onto it (as before --connections).
    if args.connections > 1:
        return [open_channel(address, own_connection=True) for _ in range(args.connections)]
    return [open_channel(address) for _ in range(CHANNELS)]


async def _measure(
    address: str, floor_address: str, args: argparse.Namespace, pid: int, floor_pid: int
) -> dict[str, Any]:
    channels, floor_channels = _channels(address, args), _channels(floor_address, args)
    users_stub = users_pb2_grpc.UserServiceStub(channels[0])
    chats = [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
    floor_chats = [chat_pb2_grpc.ChatServiceStub(c) for c in floor_channels]
    tag = uuid.uuid4().hex[:6]
    people = await register(users_stub, args.subscribers + 1, tag)
    sender, listeners = people[0], people[1:]
    room_id = await create_room(chats[0], sender, listeners)

    sender_auth = auth(sender.tokens.access_token)

    async def send_real(request: chat_pb2.SendMessageRequest) -> Any:
        return await chats[0].SendMessage(request, metadata=sender_auth)

    real = Target(
        "real",
        send_real,
        room_id,
        [Subscriber(chats[i % len(chats)], auth(p.tokens.access_token)) for i, p in enumerate(listeners)],
        pid,
    )
    floor = Target(
        "floor",
        floor_chats[0].SendMessage,
        room_id,
        [Subscriber(floor_chats[i % len(floor_chats)]) for i in range(args.subscribers)],
        floor_pid,
    )
    for target in (real, floor):
        await subscribe_all(target.subscribers, room_id)
    await asyncio.sleep(1)
    print(f"  {args.subscribers} subscribers connected to each server", file=sys.stderr)

    health_before = await health_rate(address)
    for target in (real, floor):
        await run_step(target, args.rate, 2.0)  # warm-up
    runs = []
    for _ in range(args.repeats):
        runs.append(await run_step(real, args.rate, args.seconds))
        print_step("real latency", runs[-1])
    rounds: list[tuple[list[Step], list[Step]]] = []
    for i in range(args.rounds):
        # Alternate which goes first: a neighbour's burst should not always fall on the same one.
        first, second = (floor, real) if i % 2 == 0 else (real, floor)
        done = {t.name: await ramp(t, args.rates, args.step_seconds, args.bound_ms) for t in (first, second)}
        rounds.append((done["floor"], done["real"]))
    for target in (real, floor):
        for sub in target.subscribers:
            await sub.close()
    await asyncio.sleep(1)

    health_after = await health_rate(address)
    memory = await measure_idle_streams(
        args.idle_streams, users_stub, (address, floor_address), pid, floor_pid
    )
    for channel in channels + floor_channels:
        await channel.close(None)
    return {"latency_runs": runs, "rounds": rounds, "memory": memory, "health": (health_before, health_after)}


def _start_real(dsn: str, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_port()}"
    if args.synchronous_commit == "off":
        dsn += "&synchronous_commit=off"  # asyncpg sends it as a session setting of every connection
    env = server_env(dsn, address, workers=str(args.workers))
    server = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=env)
    wait_serving(address, connections=1 if args.workers == 1 else 8 * args.workers)
    return server, address


def _start_floor() -> tuple[subprocess.Popen[str], str]:
    address = f"127.0.0.1:{free_port()}"
    floor = subprocess.Popen(
        [sys.executable, "-m", "bench.chat_floor", address], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert floor.stdout is not None
    if not floor.stdout.readline():
        raise SystemExit("the floor server did not start")
    return floor, address


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s for the latency figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each latency run")
    parser.add_argument("--repeats", type=int, default=3, help="latency runs (the median one is reported)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ramps on the floor and the server")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES)
    parser.add_argument("--step-seconds", type=float, default=5.0, help="duration of each ramp step")
    parser.add_argument("--bound-ms", type=float, default=50.0, help="p99 bound for the sustained figure")
    parser.add_argument("--idle-streams", type=int, default=10_000)
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded PostgreSQL folder (temp)")
    add_worker_arguments(parser, connections="the streams use")
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="off: the real server's commits do not wait for the disk (a diagnosis of what the disk's"
        " stalls cost; the server always runs with on, and an acknowledged message must survive a crash)",
    )
    add_load_argument(parser)
    args = parser.parse_args(argv)
    resolve_connections(args)

    import uvloop

    from server.db.embedded import EmbeddedPostgres

    began = Conditions.now()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="sendinchat-chat-bench-"))
    pg = EmbeddedPostgres(data_dir)
    processes: list[subprocess.Popen[Any]] = []
    try:
        dsn = asyncio.run(pg.ensure_database(f"chat_bench_{uuid.uuid4().hex[:6]}"))
        server, address = _start_real(dsn, args)
        processes.append(server)
        floor, floor_address = _start_floor()
        processes.append(floor)
        with cpu_burners(args.load):
            started = Conditions.now()
            disk_before = fsync_probe(data_dir)
            figures = uvloop.run(_measure(address, floor_address, args, server.pid, floor.pid))
            disk_after = fsync_probe(data_dir)
            ended = Conditions.now()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        pg.stop()
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    _report(args, figures, began, started, ended, (disk_before, disk_after))


def _channels_in_words(args: argparse.Namespace) -> str:
    """How the streams reach a server, in words."""
    if args.connections > 1:
        return f"{args.connections} TCP connections"
    return f"{CHANNELS} channels on one TCP connection"


def _deliveries(step: Step | None, args: argparse.Namespace) -> float:
    return 0.0 if step is None else step.rate * args.subscribers


def _report(
    args: argparse.Namespace,
    figures: dict[str, Any],
    began: Conditions,
    started: Conditions,
    ended: Conditions,
    disk: tuple[str, str],
) -> None:
    runs: list[Step] = figures["latency_runs"]
    # The machine is shared (tests, other benchmarks): report the median run by p99, as PERFORMANCE.md does.
    latency = sorted(runs, key=lambda r: r.percentile(0.99))[len(runs) // 2]
    print()
    print("SendInChat chat fan-out benchmark: the real server against its floor")
    print(f"  before start-up: {began}")
    print(f"  measuring from:  {started}")
    print(f"  measuring until: {ended}")
    load = f"{args.load} CPU-burning processes (--load)" if args.load else "no added load"
    if args.synchronous_commit == "off":
        load += "; DIAGNOSIS: the real server's commits do not wait for the disk (--synchronous-commit off)"
    print(f"  machine: {machine_line()}; {load}; server, floor, PostgreSQL and this load generator on it")
    print(f"  disk (PostgreSQL's folder), before: {disk[0]}; after: {disk[1]}")
    before, after = figures["health"]
    print(
        f"  Health/Check on the real server, 16 callers in this process for 3 s: {before:.0f}/s before the"
        f" measurements, {after:.0f}/s after them"
    )
    print(
        f"  one group room, 1 sender (SendMessage at a fixed rate), {args.subscribers} subscribers"
        f" (one Connect stream each, over {_channels_in_words(args)}); {args.workers} server worker(s);"
        " the floor: bench/chat_floor.py (trigger: its unary SendMessage; frame serialized once)"
    )
    print()
    print(
        f"  latency at {latency.rate:g} msg/s ({latency.rate * args.subscribers:.0f} deliveries/s), median of"
        f" {args.repeats} runs of {args.seconds:g} s: p50 {latency.percentile(0.5):.1f} ms,"
        f" p99 {latency.percentile(0.99):.1f} ms (SendMessage, i.e. store and commit:"
        f" p50 {latency.commit_percentile(0.5):.1f} ms, p99 {latency.commit_percentile(0.99):.1f} ms),"
        f" {latency.delivered}/{latency.expected} delivered, server {latency.server_cores:.2f} cores"
        f" (all p99: {', '.join(f'{r.percentile(0.99):.1f}' for r in runs)} ms)"
    )
    ratios, floors, reals = [], [], []
    print(f"  sustained deliveries/s with p99 <= {args.bound_ms:g} ms (steps of {args.step_seconds:g} s):")
    for i, (floor_steps, real_steps) in enumerate(figures["rounds"], 1):
        f_best, r_best = sustained(floor_steps, args.bound_ms), sustained(real_steps, args.bound_ms)
        f, r = _deliveries(f_best, args), _deliveries(r_best, args)
        floors.append(f)
        reals.append(r)
        ratios.append(r / f if f else 0.0)
        print(
            f"    round {i}: floor {f:.0f} ({_at(f_best)}), real {r:.0f} ({_at(r_best)}),"
            f" ratio {ratios[-1]:.2f}; server CPU per delivery there:"
            f" floor {_cpu_per_delivery(f_best, args)}, real {_cpu_per_delivery(r_best, args)}"
        )
    floor_median, real_median = statistics.median(floors), statistics.median(reals)
    ratio = real_median / floor_median if floor_median else 0.0
    print(
        f"  medians: floor {floor_median:.0f}, real {real_median:.0f} deliveries/s; ratio of the medians"
        f" {ratio:.2f}, median of the rounds' ratios {statistics.median(ratios):.2f}"
    )
    memory = figures["memory"]
    print(
        f"  memory with {args.idle_streams} idle subscribed streams: server RSS"
        f" {memory['real_before']:.0f} -> {memory['real_after']:.0f} MB"
        f" ({memory['real_per_stream_kb']:.1f} kB a stream);"
        f" floor {memory['floor_before']:.0f} -> {memory['floor_after']:.0f} MB"
    )
    ok_latency = latency.percentile(0.99) < 50 and latency.delivered >= latency.expected
    print(
        f"  targets: p99 < 50 ms at 50 msg/s x 100: {'met' if ok_latency else 'NOT met'};"
        f" sustained >= 0.5x the floor: {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f}x);"
        f" {args.idle_streams} idle streams <= 600 MB:"
        f" {'met' if memory['real_after'] <= 600 else 'NOT met'} ({memory['real_after']:.0f} MB)"
    )


def _cpu_per_delivery(step: Step | None, args: argparse.Namespace) -> str:
    if step is None:
        return "-"
    return f"{step.server_cores / (step.rate * args.subscribers) * 1e6:.0f} µs"


def _at(step: Step | None) -> str:
    if step is None:
        return "no step within the bound"
    return (
        f"{step.rate:g} msg/s, p99 {step.percentile(0.99):.1f} ms,"
        f" SendMessage p99 {percentile(step.commits, 0.99):.1f} ms"
    )


if __name__ == "__main__":
    main()
