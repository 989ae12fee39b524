"""CreateTransfer throughput and latency against PostgreSQL's pgbench and the gRPC floor, in one run.

    .venv/bin/python -m bench.ledger_bench            # ~3 minutes: 1, 16, 64 callers, 3 rounds of 5 s
    .venv/bin/python -m bench.ledger_bench --seconds 20 --rounds 1 --concurrency 1 16 64 128
    .venv/bin/python -m bench.ledger_bench --workers 2 --connections 8  # 2 workers, 8 connections a process
    .venv/bin/python -m bench.ledger_bench --load     # the same beside one CPU-burning process per core

It starts an embedded PostgreSQL (its own data folder), the real server as a subprocess
(`python -m server`, uvloop, log level WARNING, SCHED_BATCH unless `--sched-batch off`),
registers and funds users through the RPCs, and then for each concurrency runs `--rounds`
rounds, each of them back to back on the same machine and database server (the figures are the
medians over the rounds; a shared machine drifts by 10-20 % from one minute to the next, and
interleaving keeps the three comparable):

- `grpc.health.v1.Health/Check` RPCs/s (the gRPC floor: the cheapest RPC this server answers);
- `LedgerService/CreateTransfer` RPCs/s with p50/p99 latency (each caller sends 1 minor unit to a
  random other user, with a fresh request_id);
- `pgbench -M prepared` built-in `tpcb-like` TPS at the same client count.

Load comes from separate client processes using the generated async stubs, each over
`--connections` TCP connections (with `--workers N` the kernel spreads connections, not calls,
over the workers). `--load [N]` runs N CPU-burning processes for the whole run, so the ratios can
be taken on a loaded machine as well as a quiet one. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import (
    REPO,
    add_load_argument,
    add_worker_arguments,
    cpu_burners,
    free_port,
    machine_busy_seconds,
    open_channel,
    resolve_connections,
    server_env,
    wait_serving,
)
from sendinchat.v1 import chat_pb2, chat_pb2_grpc, ledger_pb2, ledger_pb2_grpc, users_pb2, users_pb2_grpc

PASSWORD = "bench-password-123"
FUNDS = 10**12
KINDS = {"health": "Health/Check", "transfer": "CreateTransfer", "message": "SendMessage"}


@dataclass
class Result:
    """One measured run."""

    what: str
    concurrency: int
    rate: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    server_cores: float = 0.0
    postgres_cores: float = 0.0
    client_cores: float = 0.0
    machine_cores: float = 0.0  # every process on the machine, this benchmark's included
    worker_cores: list[float] = field(default_factory=list)  # each server worker's share of server_cores
    loop_cores: float = 0.0  # the server processes' main (event-loop) threads, part of server_cores
    round: int = 0


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


POSTMASTER_PID: int | None = None


def _cpu_seconds(
    server_pid: int | None, client_pids: frozenset[int] = frozenset(), workers: dict[int, float] | None = None
) -> tuple[float, float, float]:
    """CPU seconds used so far by the server, this PostgreSQL's processes and the load generators.

    Read from Linux /proc; the PostgreSQL figure includes backends that have exited (pgbench's).
    The server is its process and its children (SENDINCHAT_WORKERS); `workers` gets each child's,
    and under the key 0 the main threads' (the event loops') of all of them.
    """
    server = postgres = clients = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        pid, ppid = int(stat.parent.name), int(fields[1])
        used = (int(fields[11]) + int(fields[12])) / _TICKS
        if pid == POSTMASTER_PID:
            used += (int(fields[13]) + int(fields[14])) / _TICKS
        if POSTMASTER_PID is not None and POSTMASTER_PID in (pid, ppid):
            postgres += used
        elif server_pid is not None and server_pid in (pid, ppid):
            server += used
            if workers is not None:
                if pid != server_pid:
                    workers[pid] = used
                workers[0] = workers.get(0, 0.0) + _main_thread_seconds(pid)
        elif pid in client_pids:
            clients += used
    return server, postgres, clients


def _main_thread_seconds(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# --- load generator (runs in its own process) ---------------------------------------------------


async def _worker_main(spec: dict[str, Any]) -> dict[str, Any]:
    import uvloop  # noqa: F401  # imported for its side effect in _worker below

    channels = [open_channel(spec["address"], own_connection=True) for _ in range(spec["connections"])]
    # The stubs type HealthStub without its methods.
    healths: list[Any] = [health_pb2_grpc.HealthStub(channel) for channel in channels]
    ledgers = [ledger_pb2_grpc.LedgerServiceStub(channel) for channel in channels]
    chats = [chat_pb2_grpc.ChatServiceStub(channel) for channel in channels]
    users: list[dict[str, str]] = spec["users"]
    latencies: list[float] = []
    errors = 0
    start_barrier = spec["start_at"]
    stop_at = start_barrier + spec["seconds"]

    async def caller(index: int) -> None:
        nonlocal errors
        me = users[index % len(users)]
        metadata = (("authorization", f"Bearer {me['token']}"),)
        others = [u["id"] for u in users if u["id"] != me["id"]]
        rng = random.Random(index)
        health, ledger = healths[index % len(channels)], ledgers[index % len(channels)]
        chat = chats[index % len(channels)]
        await asyncio.sleep(max(0.0, start_barrier - time.time()))
        while time.time() < stop_at:
            started = time.perf_counter()
            try:
                if spec["kind"] == "health":
                    await health.Check(health_pb2.HealthCheckRequest())
                elif spec["kind"] == "message":
                    await chat.SendMessage(
                        chat_pb2.SendMessageRequest(
                            room_id=me["room_id"], client_message_id=str(uuid.uuid4()), text="bench"
                        ),
                        metadata=metadata,
                    )
                else:
                    await ledger.CreateTransfer(
                        ledger_pb2.CreateTransferRequest(
                            request_id=str(uuid.uuid4()),
                            to_user_id=rng.choice(others),
                            currency="USD",
                            amount_minor=1,
                        ),
                        metadata=metadata,
                    )
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(round(time.perf_counter() - started, 6))

    await asyncio.gather(*(caller(i) for i in spec["callers"]))
    for channel in channels:
        await channel.close(None)
    return {"latencies": latencies, "errors": errors}


def _worker() -> None:
    import uvloop

    spec = json.loads(sys.stdin.read())
    result = uvloop.run(_worker_main(spec))
    Path(spec["out"]).write_text(json.dumps(result))


def _run_load(
    address: str,
    kind: str,
    concurrency: int,
    seconds: float,
    users: list[dict[str, str]],
    procs: int,
    server_pid: int | None = None,
    connections: int = 1,
) -> Result:
    procs = max(1, min(procs, concurrency))
    start_at = time.time() + 1.5  # let every process import and connect first
    children = []
    for p in range(procs):
        spec = {
            "address": address,
            "kind": kind,
            "seconds": seconds,
            "start_at": start_at,
            "users": users,
            "callers": list(range(p, concurrency, procs)),
            "connections": connections,
            "out": tempfile.mktemp(prefix="sendinchat-bench-", suffix=".json"),
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.ledger_bench", "--worker"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None
        child.stdin.write(json.dumps(spec))
        child.stdin.close()
        children.append((child, Path(str(spec["out"]))))
    time.sleep(max(0.0, start_at - time.time()))
    pids = frozenset(child.pid for child, _ in children)
    workers_before: dict[int, float] = {}
    workers_after: dict[int, float] = {}
    cpu_before, machine_before = _cpu_seconds(server_pid, pids, workers_before), machine_busy_seconds()
    time.sleep(seconds)
    cpu_after, machine_after = _cpu_seconds(server_pid, pids, workers_after), machine_busy_seconds()
    latencies: list[float] = []
    errors = 0
    for child, path in children:
        child.wait()
        out = json.loads(path.read_text())
        path.unlink()
        latencies.extend(out["latencies"])
        errors += out["errors"]
    latencies.sort()
    name = KINDS[kind]
    if not latencies:
        return Result(name, concurrency, 0.0, errors=errors)
    return Result(
        name,
        concurrency,
        len(latencies) / seconds,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=errors,
        server_cores=(cpu_after[0] - cpu_before[0]) / seconds,
        postgres_cores=(cpu_after[1] - cpu_before[1]) / seconds,
        client_cores=(cpu_after[2] - cpu_before[2]) / seconds,
        machine_cores=(machine_after - machine_before) / seconds,
        worker_cores=[
            (workers_after[pid] - workers_before.get(pid, 0.0)) / seconds
            for pid in sorted(workers_after)
            if pid
        ],
        loop_cores=(workers_after.get(0, 0.0) - workers_before.get(0, 0.0)) / seconds,
    )


# --- orchestration --------------------------------------------------------------------------------


async def _prepare(address: str, dsn: str, count: int) -> list[dict[str, str]]:
    """Register `count` users and an admin, fund every user; return ids and access tokens."""
    channel = grpc.aio.insecure_channel(address)
    stub_users = users_pb2_grpc.UserServiceStub(channel)
    ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
    tag = uuid.uuid4().hex[:6]

    async def login(name: str) -> users_pb2.LoginResponse:
        await stub_users.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
        return await stub_users.Login(users_pb2.LoginRequest(username=name, password=PASSWORD))

    admin_name = f"admin_{tag}"
    await login(admin_name)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE users SET role = 'admin' WHERE username = $1", admin_name)
    finally:
        await conn.close()
    admin = await stub_users.Login(users_pb2.LoginRequest(username=admin_name, password=PASSWORD))
    admin_auth = (("authorization", f"Bearer {admin.tokens.access_token}"),)
    replies = await asyncio.gather(*(login(f"bench_{tag}_{i}") for i in range(count)))
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    users = []
    for i, reply in enumerate(replies):
        await ledger.Deposit(
            ledger_pb2.DepositRequest(
                request_id=str(uuid.uuid4()), to_user_id=reply.user.id, currency="USD", amount_minor=FUNDS
            ),
            metadata=admin_auth,
        )
        user = {"id": reply.user.id, "token": reply.tokens.access_token}
        if len(replies) > 1:  # each user's SendMessage goes to a direct room with the next (unwatched)
            room = await chat.CreateRoom(
                chat_pb2.CreateRoomRequest(
                    kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[replies[(i + 1) % len(replies)].user.id]
                ),
                metadata=(("authorization", f"Bearer {reply.tokens.access_token}"),),
            )
            user["room_id"] = room.room.id
        users.append(user)
    await channel.close(None)
    return users


def _pgbench(bin_dir: Path, uri: str, clients: int, seconds: float) -> Result:
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before, machine_before, started = _cpu_seconds(None), machine_busy_seconds(), time.perf_counter()
    out = subprocess.run(
        [
            str(bin_dir / "pgbench"),
            "-n",
            "-M",
            "prepared",
            "-b",
            "tpcb-like",
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(max(1, round(seconds))),
            uri,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert match is not None, out
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    elapsed, machine_after = time.perf_counter() - started, machine_busy_seconds()  # connecting included
    time.sleep(0.2)  # until the postmaster has reaped pgbench's backends (their CPU joins its own)
    cpu_after = _cpu_seconds(None)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    pgbench_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return Result(
        "pgbench tpcb-like",
        clients,
        float(match.group(1)),
        latency and float(latency.group(1)),
        postgres_cores=(cpu_after[1] - cpu_before[1]) / elapsed,
        client_cores=pgbench_cpu / elapsed,
        machine_cores=(machine_after - machine_before) / elapsed,
    )


async def _audit(address: str, dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS transfers, (SELECT sum(balance) FROM accounts) AS total FROM transfers"
        )
    finally:
        await conn.close()
    assert row is not None
    return f"{row['transfers']} transfers stored; sum of all balances = {row['total']}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per concurrency (medians)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--users", type=int, default=64, help="funded users the callers pick from")
    parser.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    add_worker_arguments(parser, connections="per load-generator process")
    parser.add_argument("--pgbench-scale", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=10, help="server's SENDINCHAT_DB_POOL_SIZE")
    parser.add_argument(
        "--sched-batch", choices=("on", "off"), default="on", help="server's SENDINCHAT_SCHED_BATCH"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded PostgreSQL folder (temp)")
    add_load_argument(parser)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return
    resolve_connections(args)

    from server.db.embedded import EmbeddedPostgres

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="sendinchat-bench-"))
    pg = EmbeddedPostgres(data_dir)
    server: subprocess.Popen[bytes] | None = None
    try:
        global POSTMASTER_PID
        POSTMASTER_PID = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        dsn = asyncio.run(pg.ensure_database("ledger_bench"))
        pgbench_uri = asyncio.run(pg.ensure_database("pgbench"))
        subprocess.run(
            [str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", str(args.pgbench_scale), pgbench_uri],
            check=True,
            capture_output=True,
        )
        port = free_port()
        address = f"127.0.0.1:{port}"
        env = server_env(
            dsn,
            address,
            db_pool_size=str(args.pool_size),
            sched_batch=args.sched_batch,
            workers=str(args.workers),
        )
        server = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, env=env)
        wait_serving(address, connections=1 if args.workers == 1 else 8 * args.workers)
        users = asyncio.run(_prepare(address, dsn, args.users))
        results: list[Result] = []
        with cpu_burners(args.load):
            _measure(args, address, pg.bin_dir, pgbench_uri, users, server.pid, results)
        integrity = asyncio.run(_audit(address, dsn))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        pg.stop()
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    _report(args, results, integrity)


def _measure(
    args: argparse.Namespace,
    address: str,
    bin_dir: Path,
    pgbench_uri: str,
    users: list[dict[str, str]],
    server_pid: int,
    results: list[Result],
) -> None:
    for concurrency in args.concurrency:
        # SendMessage's target is at one caller; it is measured there only.
        kinds = ("health", "transfer", "message") if concurrency == 1 else ("health", "transfer")
        for round_number in range(args.rounds):
            measured = [
                _run_load(
                    address,
                    kind,
                    concurrency,
                    args.seconds,
                    users,
                    args.client_procs,
                    server_pid,
                    args.connections,
                )
                for kind in kinds
            ]
            measured.append(_pgbench(bin_dir, pgbench_uri, concurrency, args.seconds))
            for result in measured:
                result.round = round_number
            results.extend(measured)
            _print_progress(measured)


def _print_progress(results: list[Result]) -> None:
    for r in results:
        per_rpc = "".join(
            f" {name} {cores / r.rate * 1e6:.0f}"
            for name, cores in (
                ("server", r.server_cores),
                ("postgres", r.postgres_cores),
                ("clients", r.client_cores),
            )
            if r.rate
        )
        workers = f" = {' + '.join(f'{c:.2f}' for c in r.worker_cores)} in workers" if r.worker_cores else ""
        workers += f", event loops {r.loop_cores:.2f}" if r.server_cores else ""
        print(
            f"  c={r.concurrency:<3} {r.what:<18} {r.rate:9.0f}/s"
            f"  (server {r.server_cores:.2f} cores{workers}, postgres {r.postgres_cores:.2f} cores,"
            f" clients {r.client_cores:.2f} cores; whole machine {r.machine_cores:.2f} of {os.cpu_count()};"
            f" CPU µs per call:{per_rpc})",
            file=sys.stderr,
        )


def _median_of(results: list[Result], what: str, concurrency: int) -> Result:
    """The round with the median rate (its latencies and CPU figures come with it)."""
    runs = sorted(
        (r for r in results if r.what == what and r.concurrency == concurrency), key=lambda r: r.rate
    )
    return runs[(len(runs) - 1) // 2]


def _ratios(results: list[Result], concurrency: int) -> tuple[list[float], list[float]]:
    """Per round: CreateTransfer ÷ pgbench and CreateTransfer ÷ Health."""
    rounds: dict[int, dict[str, Result]] = {}
    for r in results:
        if r.concurrency == concurrency:
            rounds.setdefault(r.round, {})[r.what] = r
    by_pg = [r["CreateTransfer"].rate / r["pgbench tpcb-like"].rate for r in rounds.values()]
    by_health = [r["CreateTransfer"].rate / r["Health/Check"].rate for r in rounds.values()]
    return by_pg, by_health


def _report(args: argparse.Namespace, results: list[Result], integrity: str) -> None:
    print()
    print("SendInChat ledger benchmark")
    print(
        f"  machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, asyncpg {asyncpg.__version__}"
    )
    print(
        f"  each figure: median of {args.rounds} interleaved rounds of {args.seconds:g} s;"
        f" {args.users} funded users; {args.client_procs} client processes;"
        f" pgbench -M prepared tpcb-like, scale {args.pgbench_scale}; server pool {args.pool_size},"
        f" SCHED_BATCH {args.sched_batch}; {args.workers} server worker(s),"
        f" {args.connections} connection(s) per client process;"
        f" {f'{args.load} CPU-burning process(es) beside it' if args.load else 'no added load'}"
    )
    print()
    header = (
        f"{'callers':>7} | {'CreateTransfer/s':>16} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | "
        f"{'pgbench TPS':>11} | {'Health/s':>8} | {'÷ pgbench':>9} {'÷ Health':>8} | per-round ratios"
    )
    print(header)
    print("-" * len(header))
    for c in args.concurrency:
        t = _median_of(results, "CreateTransfer", c)
        p = _median_of(results, "pgbench tpcb-like", c)
        h = _median_of(results, "Health/Check", c)
        by_pg, by_health = _ratios(results, c)
        rounds = " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(by_pg, by_health, strict=True))
        print(
            f"{c:>7} | {t.rate:>16.0f} {t.p50_ms or 0:>7.2f} {t.p99_ms or 0:>7.2f} {t.errors:>4} | "
            f"{p.rate:>11.0f} | {h.rate:>8.0f} | {t.rate / p.rate:>9.2f} {t.rate / h.rate:>8.2f} | {rounds}"
        )
    print()
    print(f"  after the run: {integrity}")
    if 1 in args.concurrency:
        _report_one_caller(results)
    if 16 in args.concurrency:
        t = _median_of(results, "CreateTransfer", 16)
        p = _median_of(results, "pgbench tpcb-like", 16)
        h = _median_of(results, "Health/Check", 16)
        ok_pg, ok_h = t.rate >= 0.5 * p.rate, t.rate >= 0.6 * h.rate
        print(
            f"  targets at 16 callers (medians): >= 0.5x pgbench {'MET' if ok_pg else 'NOT MET'} "
            f"({t.rate / p.rate:.2f}x), >= 0.6x Health/Check {'MET' if ok_h else 'NOT MET'} "
            f"({t.rate / h.rate:.2f}x)"
        )


def _median_p50(results: list[Result], what: str) -> float:
    return statistics.median(r.p50_ms or 0.0 for r in results if r.what == what and r.concurrency == 1)


def _report_one_caller(results: list[Result]) -> None:
    """The one-caller target: p50 <= Health/Check's p50 + 1.5 x pgbench's latency per transaction."""
    health = _median_p50(results, "Health/Check")
    pgbench = _median_p50(results, "pgbench tpcb-like")
    budget = health + 1.5 * pgbench
    print(
        f"  one caller (medians of the rounds): Health/Check p50 {health:.2f} ms, pgbench tpcb-like"
        f" {pgbench:.2f} ms a transaction; budget {health:.2f} + 1.5 x {pgbench:.2f} = {budget:.2f} ms"
    )
    for what in ("CreateTransfer", "SendMessage"):
        p50 = _median_p50(results, what)
        verdict = "MET" if p50 <= budget else "NOT MET"
        print(f"    {what} p50 {p50:.2f} ms: {verdict} ({p50 - health:+.2f} ms over Health/Check)")


if __name__ == "__main__":
    main()
