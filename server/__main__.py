"""Command line: `python -m server` serves; `migrate`, `create-admin`, `healthcheck` are admin tasks."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from server.config import Config, ConfigError, admin_credentials
from server.errors import PermissionDeniedError, UnavailableError
from server.workers import WORKER_FD_FLAG, WorkerError


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _migrate(config: Config) -> None:
    from server.bootstrap import open_database, run_migrations

    dsn, embedded = await open_database(config)
    try:
        applied = await run_migrations(dsn, wait_seconds=config.db_connect_timeout_seconds)
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _create_admin(config: Config, username: str, password: str) -> None:
    from server.bootstrap import load_jwt_secret, open_database, run_migrations, user_deps
    from server.db.pool import create_pool
    from server.users.service import ensure_admin

    dsn, embedded = await open_database(config)
    try:
        await run_migrations(dsn, wait_seconds=config.db_connect_timeout_seconds)
        pool = await create_pool(dsn, size=1)
        try:
            admin = await ensure_admin(
                pool, user_deps(config, load_jwt_secret(config)), username=username, password=password
            )
        finally:
            await pool.close()
        print(f"admin {admin.username} ({admin.id}) is ready")
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _healthcheck(config: Config, ca_file: Path | None, server_name: str) -> int:
    """grpc.health.v1 Check on this server's local port, with its TLS settings: 0 when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from server.ports import local_target

    target = local_target(config.address)
    if config.tls_cert_file is None:
        channel = grpc.insecure_channel(target)
    else:
        # The server's own certificate as the trust root fits a self-signed one; a CA-issued one
        # needs --ca-file and --server-name (a name the certificate is valid for).
        roots = (ca_file or config.tls_cert_file).read_bytes()
        channel = grpc.secure_channel(
            target,
            grpc.ssl_channel_credentials(root_certificates=roots),
            options=[("grpc.ssl_target_name_override", server_name)],
        )
    with channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed's HealthStub declares no methods
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _say(message: str) -> None:
    print(f"sendinchat: {message}", file=sys.stderr)


def _log(message: str, **fields: object) -> None:
    """The server's stderr is its JSON log, even for a failure before logging starts or after it ends."""
    from server.observability import json_line

    print(json_line("ERROR", "server", message, **fields), file=sys.stderr)


def _prompted_password(variable: str) -> str:
    """The admin's password typed at the terminal; ConfigError when there is no terminal to ask."""
    if not sys.stdin.isatty():
        raise ConfigError(f"{variable} is not set and there is no terminal to ask for the password on")
    try:
        return getpass.getpass("password for the admin: ")
    except EOFError:
        raise ConfigError(f"no password typed (or set {variable})") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m server` and `sendinchat-server`."""
    # The server forks only to exec (pg_ctl, initdb): gRPC's fork handlers have nothing to do, and
    # would log a non-JSON line ("skipping fork() handlers") whenever gRPC threads are busy.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = argparse.ArgumentParser(prog="python -m server", description="SendInChat gRPC server")
    commands = parser.add_subparsers(dest="command")
    serve_command = commands.add_parser("serve", help="run the server (the default)")
    # How a parent with SENDINCHAT_WORKERS > 1 starts each worker (server/workers.py).
    serve_command.add_argument(WORKER_FD_FLAG, type=int, dest="worker_fd", help=argparse.SUPPRESS)
    commands.add_parser("migrate", help="apply database migrations and exit")
    admin = commands.add_parser("create-admin", help="create (or promote) an admin user")
    admin.add_argument("--username", required=True)
    admin.add_argument(
        "--password-env",
        default="SENDINCHAT_ADMIN_PASSWORD",
        help="environment variable holding the password (prompted for when unset)",
    )
    check = commands.add_parser(
        "healthcheck", help="exit 0 when this server's grpc.health.v1 status is SERVING (Docker HEALTHCHECK)"
    )
    check.add_argument("--ca-file", type=Path, help="TLS: trust roots (default: SENDINCHAT_TLS_CERT_FILE)")
    check.add_argument("--server-name", default="localhost", help="TLS: a name the certificate is valid for")
    args = parser.parse_args(argv)
    serving = args.command in (None, "serve")
    report = _log if serving else _say
    try:
        config = Config.from_env()
    except ConfigError as exc:
        report(f"configuration error: {exc}")
        raise SystemExit(2) from None
    try:
        if args.command == "migrate":
            _run(_migrate(config))
        elif args.command == "healthcheck":
            raise SystemExit(_healthcheck(config, args.ca_file, args.server_name))
        elif args.command == "create-admin":
            password = os.environ.get(args.password_env) or _prompted_password(args.password_env)
            username, password = admin_credentials(
                args.username, password, username_from="--username", password_from=args.password_env
            )
            _run(_create_admin(config, username, password))
        elif getattr(args, "worker_fd", None) is not None:
            from server.app import serve_worker
            from server.workers import ParentLink

            _run(serve_worker(config, ParentLink.open(args.worker_fd)))
        else:
            from server.app import serve

            _run(serve(config))
    except ConfigError as exc:
        report(f"configuration error: {exc}")
        raise SystemExit(2) from None
    except (UnavailableError, PermissionDeniedError, WorkerError) as exc:
        report(str(exc))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
    except Exception:
        if not serving:
            raise
        _log("unexpected error", traceback=traceback.format_exc())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
