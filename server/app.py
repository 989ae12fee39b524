"""Wiring: pool, migrations, servicers, health, reflection, interceptor, metrics, signals, workers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import secrets
import signal
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import CollectorRegistry

from sendinchat.v1 import chat_pb2, chat_pb2_grpc, ledger_pb2, ledger_pb2_grpc, users_pb2, users_pb2_grpc
from server.auth.passwords import PasswordHasher
from server.auth.sessions import EndedSessions
from server.auth.tokens import TokenCodec
from server.chat.bus import ChatBus, open_bus, quiet_database_url
from server.chat.hub import ChatHub
from server.chat.servicer import ChatServicer
from server.config import MIN_JWT_SECRET_BYTES, Config, ConfigError
from server.db import errors as db_errors
from server.db.embedded import EmbeddedPostgres
from server.db.migrate import migrate
from server.db.pool import create_pool
from server.errors import UnavailableError
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
    forget_worker,
    serve_metrics,
    worker_metrics,
)
from server.reflection import enable_reflection
from server.scheduling import use_batch_scheduling
from server.streams import StreamLifetimes
from server.users import service as users
from server.users.servicer import UserServicer
from server.users.throttle import LoginLimits
from server.workers import ParentLink, Supervisor, WorkerError, WorkerOrders, reserve_address

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
# Outside its pool a replica holds a connection each for chat's LISTEN, the session poller and
# (while someone watches) the ledger's LISTEN.
_OWN_CONNECTIONS_PER_REPLICA = 3


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
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def user_deps(config: Config, jwt_secret: str) -> users.UserDeps:
    """The user service's collaborators, built from config."""
    return users.UserDeps(
        hasher=PasswordHasher(config.bcrypt_rounds),
        tokens=token_codec(config, jwt_secret),
        login_limits=LoginLimits(
            per_username_and_peer=config.login_attempts_per_username_and_peer,
            per_peer=config.login_attempts_per_peer,
            per_username=config.login_attempts_per_username,
            window_seconds=config.login_window_seconds,
        ),
        ended_sessions=EndedSessions(access_ttl_seconds=config.access_token_ttl_seconds),
    )


def token_codec(config: Config, jwt_secret: str) -> TokenCodec:
    """The JWT codec for this deployment."""
    return TokenCodec(
        secret=jwt_secret,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        access_ttl_seconds=config.access_token_ttl_seconds,
        refresh_ttl_seconds=config.refresh_token_ttl_seconds,
    )


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
    server = grpc.aio.server(interceptors=[interceptor], options=[("grpc.so_reuseport", int(reuse_port))])
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
        ChatServicer(pool, hub, stream_buffer=config.chat_stream_buffer), server
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
    jobs = Jobs(pool, health_state, deps.login_limits)
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


def _bind(server: grpc.aio.Server, config: Config) -> int:
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


def load_jwt_secret(config: Config) -> str:
    """The configured secret, or (embedded mode only) a dev secret generated once in the data folder."""
    if config.jwt_secret is not None:
        return config.jwt_secret
    path = config.data_dir / _JWT_SECRET_FILE
    if not path.exists():
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temporary file, then linked into place: link() fails if
        # another replica got there first, and nobody ever reads a half-written secret.
        fd, temporary = tempfile.mkstemp(dir=config.data_dir, prefix=".jwt_secret.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    secret = path.read_text().strip()
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(
            f"SENDINCHAT_DATA_DIR: {path} holds a JWT secret under {MIN_JWT_SECRET_BYTES} bytes"
        )
    return secret


async def open_database(config: Config) -> tuple[str, EmbeddedPostgres | None]:
    """The database URL to use, starting the embedded PostgreSQL when none is configured."""
    if config.database_url is not None:
        return config.database_url, None
    embedded = await asyncio.to_thread(EmbeddedPostgres, config.data_dir)
    return await embedded.ensure_database(), embedded


async def run_migrations(dsn: str, *, wait_seconds: float = 0.0) -> list[str]:
    """Apply pending migrations on a dedicated connection, waiting up to `wait_seconds` for the database."""
    conn = await connect_patiently(dsn, wait_seconds=wait_seconds)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def connect_patiently(dsn: str, *, wait_seconds: float) -> asyncpg.Connection:
    """A connection, retried with backoff (a log line per attempt) while the database is unreachable.

    A replica started while PostgreSQL is down (or still starting, or failing over) comes up by
    itself once it answers; after `wait_seconds` it gives up with UnavailableError.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    delay = _FIRST_RETRY_SECONDS
    for attempt in itertools.count(1):
        try:
            return await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:
            if not db_errors.is_connect_failure(exc):
                raise
            left = deadline - loop.time()
            if left <= 0:
                raise UnavailableError(
                    f"cannot reach the database after {attempt} attempts in {wait_seconds:g} s "
                    f"(last: {type(exc).__name__}: {exc})"
                ) from None
            log.warning("cannot reach the database (attempt %d: %s); retrying in %.1f s", attempt, exc, delay)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_RETRY_SECONDS)
    raise AssertionError("unreachable")


async def serve(config: Config) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully."""
    log_writer = configure_logging(config.log_level)
    try:
        await _serve(config, log_writer)
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
            await _serve_workers(config, dsn, jwt_secret, log_writer)
            return
        pool = await create_pool(dsn, size=config.db_pool_size)
        try:
            await _ensure_admin(config, pool, jwt_secret)
            await _serve_with_pool(config, pool, jwt_secret, dsn)
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _ensure_admin(config: Config, pool: asyncpg.Pool, jwt_secret: str) -> None:
    if config.embedded and config.admin_username and config.admin_password:
        admin = await users.ensure_admin(
            pool,
            user_deps(config, jwt_secret),
            username=config.admin_username,
            password=config.admin_password,
        )
        log.info("admin user %s is ready", admin.username)


async def _check_connection_budget(config: Config, pool: asyncpg.Pool) -> None:
    """Warn when the workers together may open more connections than the database accepts."""
    try:
        limit = int(await pool.fetchval("SELECT current_setting('max_connections')::int"))
        reserved = int(await pool.fetchval("SELECT current_setting('superuser_reserved_connections')::int"))
    except asyncpg.PostgresError:  # a proxy in front of the database may not tell; nothing to warn about
        return
    need = config.workers * (config.db_pool_size + _OWN_CONNECTIONS_PER_REPLICA)
    if need > limit - reserved:
        log.warning(
            "%d workers may open %d connections (pool of %d + %d each), more than the %d this database"
            " accepts (max_connections %d): lower SENDINCHAT_DB_POOL_SIZE or SENDINCHAT_WORKERS",
            config.workers,
            need,
            config.db_pool_size,
            _OWN_CONNECTIONS_PER_REPLICA,
            limit - reserved,
            limit,
        )


def _start_metrics(config: Config, registry: CollectorRegistry) -> WSGIServer:
    try:
        server = serve_metrics(registry, config.metrics_address)
    except OSError as exc:
        raise ConfigError(
            f"SENDINCHAT_METRICS_ADDRESS: cannot listen on {config.metrics_address}: {exc}"
        ) from None
    host = config.metrics_address.rpartition(":")[0]
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def _stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_with_pool(
    config: Config, pool: asyncpg.Pool, jwt_secret: str, dsn: str, *, link: ParentLink | None = None
) -> None:
    metrics = Metrics()
    if config.metrics_address:
        _start_metrics(config, metrics.registry)
    running = await create_server(
        config, pool, jwt_secret=jwt_secret, metrics=metrics, dsn=dsn, reuse_port=link is not None
    )
    log.info("serving gRPC on %s (port %d)", config.address, running.port)
    stop = _stop_event()
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


async def _serve_workers(config: Config, dsn: str, jwt_secret: str, log_writer: LogWriter) -> None:
    """The parent of SENDINCHAT_WORKERS processes (server/workers.py): one port, one /metrics."""
    pool = await create_pool(dsn, size=1)
    try:
        await _ensure_admin(config, pool, jwt_secret)
        await _check_connection_budget(config, pool)
    finally:
        await pool.close()
    with reserve_address(config.address) as (address, port), contextlib.ExitStack() as stack:
        env = dict(os.environ)
        on_exit = None
        if config.metrics_address:
            metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sendinchat-metrics-"))
            stack.callback(_start_metrics(config, worker_metrics(metrics_dir)).shutdown)
            # Read as each worker's interpreter starts, as prometheus-client requires.
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            on_exit = functools.partial(forget_worker, directory=metrics_dir)
        supervisor = Supervisor(
            count=config.workers,
            orders=WorkerOrders(address=address, dsn=dsn, jwt_secret=jwt_secret),
            env=env,
            relay=log_writer.relay,
            on_exit=on_exit,
        )
        stop = _stop_event()
        clean = False
        try:
            if await supervisor.start(stop):
                log.info(
                    "serving gRPC on %s (port %d) with %d workers (pids %s)",
                    config.address,
                    port,
                    config.workers,
                    " ".join(map(str, supervisor.pids)),
                )
                await supervisor.wait(stop)
            log.info(
                "shutting down: %d workers draining for up to %.1f s",
                config.workers,
                config.shutdown_grace_seconds,
            )
        finally:
            clean = await supervisor.stop()
    if not clean:
        raise WorkerError("a worker did not stop cleanly (see its log lines)")
    log.info("stopped")
