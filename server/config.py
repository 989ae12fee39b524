"""Configuration read from environment variables and validated once at start."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from asyncpg import connect_utils

from server.errors import InvalidArgumentError
from server.users.validation import check_password, normalize_username
from server.validation import ascii_digits

T = TypeVar("T")
N = TypeVar("N", int, float)

MIN_JWT_SECRET_BYTES = 32
MAX_WORKERS = 256


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """Everything the server reads from its environment."""

    address: str = "127.0.0.1:50051"
    database_url: str | None = None
    data_dir: Path = Path(".sendinchat")
    jwt_secret: str | None = None
    jwt_issuer: str = "sendinchat"
    jwt_audience: str = "sendinchat"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    bcrypt_rounds: int = 12
    db_pool_size: int = 10
    db_connect_timeout_seconds: float = 60.0
    metrics_address: str = "127.0.0.1:9464"
    shutdown_grace_seconds: float = 10.0
    login_attempts_per_username_and_peer: int = 10
    login_attempts_per_peer: int = 60
    login_attempts_per_username: int = 100
    login_window_seconds: int = 60
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    admin_username: str | None = None
    admin_password: str | None = None
    log_level: str = "INFO"
    chat_stream_buffer: int = 256
    chat_stream_max_behind: int = 10_000
    transfer_batch_linger_ms: float = 5.0
    sched_batch: bool = True
    workers: int = 1
    # NATS servers for chat fan-out (server/chat/bus_nats.py); empty: PostgreSQL LISTEN/NOTIFY.
    chat_bus: tuple[str, ...] = ()

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is set and the embedded PostgreSQL is used."""
        return self.database_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read and validate the environment; raise ConfigError naming the first bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field, parse in _PARSERS.items():
            name = variable(field)
            raw = env.get(name, "")
            if raw != "":
                values[field] = _parsed(name, raw, parse)
        config = cls(**values)
        if config.database_url is not None and config.jwt_secret is None:
            raise ConfigError("SENDINCHAT_JWT_SECRET: required when DATABASE_URL is set (32+ bytes)")
        if (config.tls_cert_file is None) != (config.tls_key_file is None):
            raise ConfigError("SENDINCHAT_TLS_CERT_FILE: set both it and SENDINCHAT_TLS_KEY_FILE, or neither")
        if config.embedded and config.admin_username is not None:  # the admin ensured at start
            admin_credentials(
                config.admin_username,
                config.admin_password,
                username_from="SENDINCHAT_ADMIN_USERNAME",
                password_from="SENDINCHAT_ADMIN_PASSWORD",
            )
        return config


def admin_credentials(
    username: str, password: str | None, *, username_from: str, password_from: str
) -> tuple[str, str]:
    """An admin's username (stored form) and password, or ConfigError naming where the bad one came from."""
    try:
        name = normalize_username(username, username_from)
        if password is None:
            raise ConfigError(f"{password_from}: needed beside {username_from}")
        check_password(password, password_from)
    except InvalidArgumentError as exc:
        variable, why = next(iter(exc.violations.items()))
        raise ConfigError(f"{variable}: {why}") from None
    return name, password


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be blank")
    return raw


def _address(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not ascii_digits(port) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 0-65535, got {raw!r}")
    return raw


def _optional_address(raw: str) -> str:
    return "" if raw.lower() in ("off", "none", "disabled") else _address(raw)


def _database_url(raw: str) -> str:
    """A postgresql:// URL that asyncpg can parse; errors never repeat it (it may hold a password)."""
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ValueError("expected a postgresql:// URL")
    try:
        parts = urlsplit(raw)
        if "," not in parts.netloc:  # one host: its port must be a number (several: libpq's list)
            _ = parts.port
    except ValueError:
        raise ValueError("is not a valid URL: check its host and port") from None
    query = parse_qs(parts.query)
    for value in query.get("port", []):
        if not all(ascii_digits(port) for port in value.split(",")):
            raise ValueError("its port parameter must be a number")
    refusal = _asyncpg_refusal(raw)
    if refusal is not None:
        if parts.password:
            refusal = refusal.replace(parts.password, "***")
        raise ValueError(f"asyncpg cannot use it: {refusal}")
    return raw


def _asyncpg_refusal(dsn: str) -> str | None:
    """What asyncpg's own URL parser says against `dsn` (it runs again at each connect), if anything.

    Its parser is internal: an asyncpg without it, or whose parser takes other arguments, is not asked.
    """
    parse: Callable[..., object] | None = getattr(connect_utils, "_parse_connect_dsn_and_args", None)
    if parse is None:
        return None
    try:
        others = {name: None for name in inspect.signature(parse).parameters if name != "dsn"}
        parse(dsn=dsn, **others)
    except TypeError:
        return None
    except Exception as exc:  # IndexError, ClientConfigurationError, FileNotFoundError (an ssl file)...
        named = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{named}"
    return None


def _nats_servers(raw: str) -> tuple[str, ...]:
    """`nats://host:4222[,host:4222...]`; later entries may leave out the first one's scheme.

    Errors name the entry by position, never its text (a URL may carry a password).
    """
    entries = [entry.strip() for entry in raw.split(",")]
    scheme = entries[0].partition("://")[0] if "://" in entries[0] else ""
    servers = []
    for position, entry in enumerate(entries, start=1):
        url = entry if "://" in entry else f"{scheme}://{entry}"
        bad = ValueError(f"expected nats://HOST:PORT[,HOST:PORT...] (or tls://), entry {position} is not one")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            raise bad
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise bad
        servers.append(url.rstrip("/"))
    return tuple(servers)


def _jwt_secret(raw: str) -> str:
    if len(raw.strip().encode()) < MIN_JWT_SECRET_BYTES:  # blanks are no secret
        raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes for HS256")
    return raw


def _int_between(low: int, high: int) -> Callable[[str], int]:
    return _between(int, "a whole number", low, high)


def _float_between(low: float, high: float) -> Callable[[str], float]:
    return _between(float, "a number", low, high)


def _between(kind: Callable[[str], N], what: str, low: N, high: N) -> Callable[[str], N]:
    def parse(raw: str) -> N:
        try:
            if not raw.isascii():  # int() and float() read other scripts' digits too
                raise ValueError
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {what}, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _existing_file(raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ValueError(f"no such file: {raw}")
    return path


def _switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, got {raw!r}")


def machine_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform tells it."""
    # os.process_cpu_count() (Python 3.13) is the affinity where there is one, else cpu_count().
    count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if count is None and hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return (count or os.cpu_count)() or 1


def _workers(raw: str) -> int:
    if raw.strip().lower() == "auto":
        return max(1, min(machine_cores(), MAX_WORKERS))
    try:
        return _int_between(1, MAX_WORKERS)(raw)
    except ValueError as exc:
        raise ValueError(f"{exc} (or auto: one per core)") from None


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def variable(field: str) -> str:
    """The environment variable a Config field is read from."""
    return "DATABASE_URL" if field == "database_url" else f"SENDINCHAT_{field.upper()}"


def _parsed(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


# How each Config field is parsed from its variable: SENDINCHAT_<FIELD> (DATABASE_URL for
# database_url); unset or empty, the field keeps its default.
_PARSERS: dict[str, Callable[[str], object]] = {
    "address": _address,
    "database_url": _database_url,
    "data_dir": Path,
    "jwt_secret": _jwt_secret,
    "jwt_issuer": _non_empty,
    "jwt_audience": _non_empty,
    "access_token_ttl_seconds": _int_between(1, 86400),
    "refresh_token_ttl_seconds": _int_between(60, 365 * 86400),
    "bcrypt_rounds": _int_between(4, 16),
    "db_pool_size": _int_between(1, 200),
    "db_connect_timeout_seconds": _float_between(0, 3600),
    "metrics_address": _optional_address,
    "shutdown_grace_seconds": _float_between(0, 600),
    "login_attempts_per_username_and_peer": _int_between(1, 10**6),
    "login_attempts_per_username": _int_between(1, 10**6),
    "login_attempts_per_peer": _int_between(1, 10**6),
    "login_window_seconds": _int_between(1, 86400),
    "tls_cert_file": _existing_file,
    "tls_key_file": _existing_file,
    "admin_username": _non_empty,
    "admin_password": _non_empty,
    "log_level": _log_level,
    "chat_stream_buffer": _int_between(8, 100_000),
    "chat_stream_max_behind": _int_between(1000, 10**9),  # a burst of one commit arrives at once
    "transfer_batch_linger_ms": _float_between(0, 1000),
    "sched_batch": _switch,
    "workers": _workers,
    "chat_bus": _nats_servers,
}
