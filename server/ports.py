"""The port the workers share: reserved by the parent, joined by each worker with SO_REUSEPORT."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from server.config import ConfigError

_WILDCARDS = ("0.0.0.0", "::")


@contextlib.contextmanager
def reserve_address(address: str) -> Iterator[tuple[str, int]]:
    """Hold `address` (HOST:PORT, port 0 picks one) for the workers; yield it with the port filled in.

    The socket is bound without SO_REUSEPORT first, so a port some other server listens on is
    refused as with one process, and is switched to SO_REUSEPORT afterwards for the workers to join
    (Linux checks the flag of the sockets already bound when a new one binds). It never listens:
    the kernel hands connections only to listening sockets. Held until the server stops, the
    port stays reserved while a worker is being replaced.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("SENDINCHAT_WORKERS: several workers need SO_REUSEPORT, which this platform lacks")
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    sockets: list[socket.socket] = []
    try:
        port = int(port_text)
        for family, sockaddr in _bind_targets(host, port):
            held = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(held)
            # gRPC binds a wildcard dual-stack, and sets SO_REUSEADDR (so TIME_WAIT connections of
            # a previous run do not block the port); do the same to meet the same conflicts.
            if family == socket.AF_INET6 and host in _WILDCARDS:
                held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.bind((sockaddr[0], port, *sockaddr[2:]))
            port = port or int(held.getsockname()[1])
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        for held in sockets:
            held.close()
        raise ConfigError(f"SENDINCHAT_ADDRESS: cannot listen on {address} (in use or not local)") from None
    try:
        yield f"{address.rpartition(':')[0]}:{port}", port
    finally:
        for held in sockets:
            held.close()


def local_target(address: str) -> str:
    """Where this host reaches a server listening on `address` (HOST:PORT; a wildcard: loopback)."""
    host, _, port = address.rpartition(":")
    if host.strip("[]") not in _WILDCARDS:
        return address
    return f"localhost:{port}" if ":" in host else f"127.0.0.1:{port}"  # localhost: ::1 or 127.0.0.1


def _bind_targets(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[Any, ...]]]:
    """Where gRPC binds HOST: a wildcard as dual-stack `::`, a name at each of its addresses."""
    if host in _WILDCARDS:
        if _has_ipv6():
            return [(socket.AF_INET6, ("::", port, 0, 0))]
        return [(socket.AF_INET, ("0.0.0.0", port))]
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    targets: list[tuple[socket.AddressFamily, tuple[Any, ...]]] = []
    for family, _type, _proto, _name, sockaddr in found:
        target: tuple[socket.AddressFamily, tuple[Any, ...]] = (family, tuple(sockaddr))
        if family in (socket.AF_INET, socket.AF_INET6) and target not in targets:
            targets.append(target)
    return targets


def _has_ipv6() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True
