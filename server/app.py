"""Wiring: one server process (pool, servicers, health, reflection, interceptor, metrics, signals).

What comes before it is server/bootstrap.py; with SENDINCHAT_WORKERS > 1 this process is the
parent instead (server/parent.py) and each worker runs `serve_worker`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from sendinchat.v1 import chat_pb2, chat_pb2_grpc, ledger_pb2, ledger_pb2_grpc, users_pb2, users_pb2_grpc
from server.auth.sessions import EndedSessions
from server.bootstrap import (
    connect_patiently,
    ensure_admin,
    load_jwt_secret,
    open_database,
    run_migrations,
    user_deps,
)
from server.chat.bus import ChatBus, open_bus, quiet_database_url
from server.chat.hub import ChatHub
from server.chat.servicer import ChatServicer
from server.config import Config, ConfigError
from server.db.pool import create_pool
from server.health import HealthState
from server.interceptor import RpcInterceptor
from server.jobs import Jobs
from server.ledger.batching import TransferBatcher
from server.ledger.servicer import LedgerServicer
from server.ledger.watch import WatchHub
from server.observability import (
    LogWriter,
    Metrics,
    RpcObserver,
    configure_logging,
)
from server.parent import serve_workers
from server.process import start_metrics, stop_event, stoppable_start
from server.reflection import enable_reflection
from server.scheduling import use_batch_scheduling
from server.streams import StreamLifetimes
from server.tasks import cancel_and_wait
from server.users.servicer import UserServicer
from server.workers import ParentLink

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    users_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
]
_JWT_SECRET_FILE = "jwt_secret"
_FIRST_RETRY_SECONDS = 0.5
_MAX_RETRY_SECONDS = 5.0
_CONNECT_TIMEOUT_SECONDS = 5.0
# Streams one HTTP/2 connection may have open at once.
MAX_STREAMS_PER_CONNECTION = 10_000
# File descriptors kept from gRPC's connections beside the pool's: the listeners' own database
# connections, /metrics, NATS, the embedded PostgreSQL's pipes, grpc core's and Python's own.
RESERVED_DESCRIPTORS = 128
MIN_CONNECTIONS = 16
# A connection with no call open is closed after this; a client reconnects on its next call.
IDLE_CONNECTION_SECONDS = 300


@dataclass
class RunningServer:
    """A started gRPC server and what must be stopped with it."""

    server: grpc.aio.Server
    port: int
    health: HealthState
    streams: StreamLifetimes
    grace_seconds: float
    ended_sessions: EndedSessions
    chat_bus: ChatBus
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, end streams with UNAVAILABLE, drain unary calls, stop."""
        self.health.set_gate("shutdown", False)
        await self.health.publish()
        self.streams.close_all()
        await self.server.stop(self.grace_seconds)
        await cancel_and_wait(*self.tasks)


async def create_server(
    config: Config,
    pool: asyncpg.Pool,
    *,
    jwt_secret: str,
    metrics: Metrics | None = None,
    dsn: str | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Build, bind and start the gRPC server; the port is the bound one (config may say 0).

    `dsn` (default: config.database_url) is where the chat hub (LISTEN) and the ended-sessions
    poller open connections of their own, outside the pool. `reuse_port` lets the workers of one
    parent bind the same port (SO_REUSEPORT); otherwise a port in use is refused.
    """
    metrics = metrics or Metrics()
    deps = user_deps(config, jwt_secret)
    streams = StreamLifetimes()
    deps.ended_sessions.subscribe(streams.end_session)
    interceptor = RpcInterceptor(
        tokens=deps.tokens, ended_sessions=deps.ended_sessions, observer=RpcObserver(metrics), streams=streams
    )
    server = grpc.aio.server(
        interceptors=[interceptor], options=_server_options(reuse_port, config.db_pool_size)
    )
    users_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(pool, deps), server)
    own_dsn = dsn or config.database_url
    if own_dsn is None:
        raise ConfigError(
            "DATABASE_URL: the listeners and the session poller need it for their own connections"
        )
    batcher = TransferBatcher(pool, linger_seconds=config.transfer_batch_linger_ms / 1000)
    watch_hub = WatchHub(pool, own_dsn)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(pool, batcher, watch_hub), server)
    hub = ChatHub(pool, open_bus(config.chat_bus, own_dsn, metrics.registry))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(
        ChatServicer(
            pool,
            hub,
            stream_buffer=config.chat_stream_buffer,
            stream_max_behind=config.chat_stream_max_behind,
        ),
        server,
    )

    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Every gate starts closed: NOT_SERVING until the database answered and the audit passed.
    health_state = HealthState(
        health_servicer, SERVICE_NAMES, metrics, gates=("database", "ledger_audit"), dsn=own_dsn
    )
    await health_state.publish()
    enable_reflection([*SERVICE_NAMES, health.SERVICE_NAME], server)

    port = _bind(server, config)
    # Until a poll succeeds, authenticated calls are refused with UNAVAILABLE (server/auth/sessions.py).
    await deps.ended_sessions.try_poll(pool)
    session_poller = asyncio.create_task(deps.ended_sessions.poll_forever(own_dsn))
    await hub.start()
    await server.start()
    await health_state.probe_database(pool)
    jobs = Jobs(pool, health_state, deps.login_limits, hub.bus)
    await jobs.audit()
    await health_state.publish()
    running = RunningServer(
        server, port, health_state, streams, config.shutdown_grace_seconds, deps.ended_sessions, hub.bus
    )
    running.tasks.append(session_poller)
    running.tasks.append(asyncio.create_task(health_state.watch_database(pool)))
    running.tasks.append(asyncio.create_task(jobs.run()))
    running.tasks.append(asyncio.create_task(watch_hub.run()))
    running.tasks.append(asyncio.create_task(hub.run_until_cancelled()))
    return running


def _server_options(reuse_port: bool, pool_size: int) -> list[tuple[str, int]]:
    """The settings of grpc core for the server.

    Calls that arrive faster than the event loop takes them wait in grpc core. Past a soft limit
    of waiting calls core drops arrivals at random, past a hard one all of them, each reset so
    that its client sees CANCELLED, as if it had given up: at core's defaults, 25 of 3,000
    concurrent calls on one connection were. Waiting costs core a few kB a call; with these
    limits a burst of 6,000 is answered (tests/contract/test_hostile_input.py).

    Streams per connection are bounded (core keeps a few kB for each open stream, and the answers
    it has not sent; past the limit a client's calls wait, or a few are refused UNAVAILABLE), so is
    how long a connection with no call open is kept, and connections on each listening address
    leave the pool, the listeners, /metrics and files their file descriptors.
    """
    options = [
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.server.max_pending_requests", 10_000),
        ("grpc.server.max_pending_requests_hard_limit", 30_000),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.max_connection_idle_ms", IDLE_CONNECTION_SECONDS * 1000),
    ]
    descriptors, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if descriptors != resource.RLIM_INFINITY:
        connections = max(MIN_CONNECTIONS, descriptors - pool_size - RESERVED_DESCRIPTORS)
        options.append(("grpc.max_allowed_incoming_connections", connections))
    return options


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    # Called only for an encrypted key; without it OpenSSL would ask on the terminal, and wait.
    raise _EncryptedKey


def _check_tls_pair(cert_file: Path, key_file: Path) -> None:
    """A ConfigError naming the file at fault unless they are a PEM certificate and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"SENDINCHAT_TLS_CERT_FILE: not a PEM certificate ({exc})") from None
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            "SENDINCHAT_TLS_KEY_FILE: the key is encrypted; give it without a passphrase"
            " (openssl pkey -in KEY -out PLAIN)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "SENDINCHAT_TLS_KEY_FILE: not the PEM private key of SENDINCHAT_TLS_CERT_FILE's certificate"
            f" ({exc})"
        ) from None


def _bind(server: grpc.aio.Server, config: Config) -> int:
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        _check_tls_pair(config.tls_cert_file, config.tls_key_file)  # before grpc core logs its view
    try:
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())]
            )
            port = server.add_secure_port(config.address, credentials)
        else:
            port = server.add_insecure_port(config.address)
    except RuntimeError:
        port = 0
    if port == 0 and not config.address.endswith(":0"):
        raise ConfigError(f"SENDINCHAT_ADDRESS: cannot listen on {config.address} (in use or not local)")
    return port


async def serve(config: Config) -> None:
    """Run the server until a stop signal (SIGTERM, SIGINT, SIGHUP), then shut down gracefully."""
    log_writer = configure_logging(config.log_level)
    try:
        await stoppable_start(_serve(config, log_writer))
    finally:
        log_writer.stop()


async def serve_worker(config: Config, link: ParentLink) -> None:
    """One of SENDINCHAT_WORKERS processes, started by the parent: a full replica on the shared port.

    The parent has started the database, migrated it and ensured the admin; it serves /metrics
    from what the workers write to PROMETHEUS_MULTIPROC_DIR, and relays this process's stderr.
    """
    log_writer = configure_logging(config.log_level)
    try:
        orders = link.orders
        config = dataclasses.replace(config, address=orders.address, metrics_address="", workers=1)
        # A replacement may start while the database is away: it waits for it as a server does.
        await (await connect_patiently(orders.dsn, wait_seconds=config.db_connect_timeout_seconds)).close()
        pool = await create_pool(orders.dsn, size=config.db_pool_size)
        try:
            await _serve_with_pool(config, pool, orders.jwt_secret, orders.dsn, link=link)
        finally:
            await pool.close()
    finally:
        link.close()
        log_writer.stop()


async def _serve(config: Config, log_writer: LogWriter) -> None:
    jwt_secret = load_jwt_secret(config)
    dsn, embedded = await open_database(config)
    if config.chat_bus:
        dsn = quiet_database_url(dsn)  # NATS carries the chat events: the database notifies none
    if config.sched_batch and use_batch_scheduling():
        # After the embedded PostgreSQL has started (it keeps the default policy), before any gRPC
        # thread; workers started later inherit it.
        log.info("threads started from here on run under SCHED_BATCH")
    try:
        await run_migrations(dsn, wait_seconds=config.db_connect_timeout_seconds)
        if config.workers > 1:
            await serve_workers(config, dsn, jwt_secret, log_writer)
            return
        pool = await create_pool(dsn, size=config.db_pool_size)
        try:
            await ensure_admin(config, pool, jwt_secret)
            await _serve_with_pool(config, pool, jwt_secret, dsn)
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _serve_with_pool(
    config: Config, pool: asyncpg.Pool, jwt_secret: str, dsn: str, *, link: ParentLink | None = None
) -> None:
    metrics = Metrics()
    if config.metrics_address:
        start_metrics(config, metrics.registry)
    running = await create_server(
        config, pool, jwt_secret=jwt_secret, metrics=metrics, dsn=dsn, reuse_port=link is not None
    )
    log.info("serving gRPC on %s (port %d)", config.address, running.port)
    stop = stop_event()
    orphaned = None
    if link is not None:
        orphaned = asyncio.create_task(_set_after(link.parent_gone(), stop, "the parent process is gone"))
        link.ready()
    await stop.wait()
    log.info("shutting down: draining for up to %.1f s", config.shutdown_grace_seconds)
    await running.stop()
    if orphaned is not None:
        orphaned.cancel()
    log.info("stopped")


async def _set_after(awaitable: Awaitable[None], event: asyncio.Event, why: str) -> None:
    await awaitable
    log.warning("%s; stopping", why)
    event.set()
