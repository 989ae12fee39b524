"""What the benchmarks share: ports, channels, server processes, waiting for SERVING, conditions, load."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The repository: benched servers run `python -m server` from here.
REPO = Path(__file__).resolve().parent.parent


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


def server_env(dsn: str, address: str, **settings: str) -> dict[str, str]:
    """The environment of a benched server: quiet, cheap logins, day-long tokens, plus `settings`.

    Settings are given by field name (`workers="2"` sets SENDINCHAT_WORKERS).
    """
    return {
        **os.environ,
        "DATABASE_URL": dsn,
        "SENDINCHAT_JWT_SECRET": "bench-secret-" + "b" * 40,
        "SENDINCHAT_ADDRESS": address,
        "SENDINCHAT_LOG_LEVEL": "WARNING",
        "SENDINCHAT_METRICS_ADDRESS": "off",
        "SENDINCHAT_BCRYPT_ROUNDS": "4",
        "SENDINCHAT_ACCESS_TOKEN_TTL_SECONDS": "86400",
        "SENDINCHAT_LOGIN_ATTEMPTS_PER_PEER": "1000000",
        **{f"SENDINCHAT_{name.upper()}": value for name, value in settings.items()},
    }


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


# --- the conditions a figure was taken in ---------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def pressure() -> str:
    """Linux PSI: the share of the last 60 s some task waited for CPU / for I/O (other engineers' work)."""
    shares = []
    for kind in ("cpu", "io"):
        try:
            first = Path(f"/proc/pressure/{kind}").read_text().split("\n", 1)[0]
            shares.append(f"{kind} {first.split()[2].partition('=')[2]} %")
        except (OSError, IndexError):
            shares.append(f"{kind} ?")
    return ", ".join(shares)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


@dataclass(frozen=True)
class Conditions:
    """What the machine was doing at one moment: the time, load averages and PSI."""

    utc: str
    load: tuple[float, float, float]
    pressure: str

    @classmethod
    def now(cls) -> Conditions:
        """The conditions right now."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        one, five, fifteen = os.getloadavg()
        return cls(stamp, (one, five, fifteen), pressure())

    def __str__(self) -> str:
        one, five, fifteen = self.load
        load = f"{one:.2f}/{five:.2f}/{fifteen:.2f}"
        return f"{self.utc}, load average {load} (1/5/15 min), PSI avg60 {self.pressure}"


def machine_line() -> str:
    """Cores, kernel and the versions that set the figures."""
    return (
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()},"
        f" grpcio {grpc.__version__}"
    )


# --- a loaded machine on purpose --------------------------------------------------------------------

_BURN = "while True:\n    pass\n"


def add_load_argument(parser: argparse.ArgumentParser) -> None:
    """`--load [N]`: N CPU-burning processes for the whole run (bare `--load`: one per core)."""
    parser.add_argument(
        "--load",
        type=int,
        nargs="?",
        const=os.cpu_count() or 1,
        default=0,
        metavar="N",
        help="start N busy-looping processes for the run (default without N: one per core)",
    )


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[list[int]]:
    """Run `count` busy-looping Python processes (default priority) while the block runs; yield their pids.

    Each spins on one core's worth of CPU, so the benchmark's processes share the machine with them
    as with a neighbour's CPU-bound work. They are killed when the block ends, however it ends.
    """
    burners = [subprocess.Popen([sys.executable, "-c", _BURN]) for _ in range(count)]
    try:
        yield [b.pid for b in burners]
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()


async def health_rate(address: str, *, seconds: float = 3.0, callers: int = 16) -> float:
    """Health/Check calls a second that `callers` closed-loop callers in this process get from `address`.

    A yardstick of the machine's speed at the moment (the ledger bench measures the same RPC from two
    processes, so its figure is higher): a reader comparing runs of different days compares it too.
    """
    async with open_channel(address, own_connection=True) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs type it as sync
        request = health_pb2.HealthCheckRequest()
        await health.Check(request)
        done = 0
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await health.Check(request)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.perf_counter() - started)


def fsync_probe(folder: Path, seconds: float = 2.0) -> str:
    """Latency of 8 kB write + fdatasync in `folder` (where PostgreSQL keeps its WAL) for `seconds`.

    A commit waits for one of these; the shared disk's stalls (hundreds of ms at times) show in the
    maximum, and a real server's p99 with them.
    """
    path = folder / "fsync-probe"
    latencies = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 8192
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    latencies.sort()
    n = len(latencies)
    p50, p99, worst = (latencies[int(n * q)] * 1000 for q in (0.5, 0.99, 0.999999))
    return f"fdatasync of 8 kB: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.1f} ms ({n} in {seconds:g} s)"
