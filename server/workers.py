"""SENDINCHAT_WORKERS: N server processes sharing one port (SO_REUSEPORT), started and watched by a parent.

gRPC's own pattern for Python (grpc/grpc examples/python/multiprocessing): the parent reserves
the port with a socket of its own, and each worker binds it again with `grpc.so_reuseport`, so
that the kernel spreads new connections over the workers' listening sockets. Workers are
spawned, not forked (`python -m server serve --worker-fd N`, a fresh interpreter each): no gRPC,
asyncio or asyncpg state crosses from the parent, whatever it had started.

Each worker gets a Unix socket pair with its parent. The parent sends its orders on it (the
address with the reserved port, the database URL, the JWT secret: never on a command line or in
the environment); the worker answers `ready` once it serves, and stops as on SIGTERM if the
parent goes away (EOF). Its stderr is a pipe of its own that the parent relays as JSON lines
tagged with the worker's number and pid.

A worker of the first start that exits before it served ends the whole server (the configuration
is at fault: a bad certificate, no database). One that dies later (SIGKILL, the OOM killer) is
replaced under the same number, at once if it had run a minute, else after a delay doubling from
1 s to 30 s, and so is a replacement that could not start (the database away meanwhile); the
other workers and their clients are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

WORKER_FD_FLAG = "--worker-fd"
_READY = b"ready\n"
_FIRST_RESTART_DELAY_SECONDS = 1.0
_MAX_RESTART_DELAY_SECONDS = 30.0
_STABLE_SECONDS = 60.0
_RELAY_DRAIN_SECONDS = 5.0


class WorkerError(Exception):
    """A worker could not start, or did not stop cleanly; the message says which and how."""


@dataclass(frozen=True)
class WorkerOrders:
    """What a worker learns from its parent rather than from the environment."""

    address: str
    dsn: str
    jwt_secret: str

    def encode(self) -> bytes:
        """One JSON line."""
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> WorkerOrders:
        """The inverse of `encode`."""
        fields = json.loads(line)
        return cls(address=fields["address"], dsn=fields["dsn"], jwt_secret=fields["jwt_secret"])


class ParentLink:
    """A worker's end of its control socket: its orders, `ready()`, and whether the parent lives."""

    def __init__(self, control: socket.socket, orders: WorkerOrders) -> None:
        self._control = control
        self.orders = orders

    @classmethod
    def open(cls, fd: int) -> ParentLink:
        """Take over the inherited socket `fd` and read the parent's orders (blocking, at start)."""
        control = socket.socket(fileno=fd)
        received = b""
        while not received.endswith(b"\n"):
            chunk = control.recv(65536)
            if not chunk:
                control.close()
                raise WorkerError("the parent closed the control socket before sending orders")
            received += chunk
        return cls(control, WorkerOrders.decode(received))

    def ready(self) -> None:
        """Tell the parent this worker serves."""
        self._control.sendall(_READY)

    async def parent_gone(self) -> None:
        """Return once the parent has exited (or closed its end)."""
        self._control.setblocking(False)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # ECONNRESET: it died with our `ready` unread
            while await loop.sock_recv(self._control, 64):
                pass

    def close(self) -> None:
        """Close the control socket."""
        self._control.close()


@dataclass
class _Worker:
    number: int
    process: asyncio.subprocess.Process
    control: socket.socket
    relay: threading.Thread
    started: float
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Supervisor:
    """Starts `count` workers, replaces the ones that die, and stops them all (see the module doc).

    `relay(read_end, fields)` passes a worker's stderr on; `on_exit(pid)` runs when a worker is gone.
    """

    count: int
    orders: WorkerOrders
    env: Mapping[str, str]
    relay: Callable[[int, Mapping[str, object]], threading.Thread]
    on_exit: Callable[[int], None] | None = None
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _slots: list[asyncio.Task[bool]] = field(default_factory=list)
    _first_ready: dict[int, asyncio.Event] = field(default_factory=dict)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0  # workers started to replace one that exited (or could not start)

    async def start(self, stop: asyncio.Event) -> bool:
        """Start every worker; True once all serve, False if `stop` was set first.

        Raises WorkerError when one exits before it serves.
        """
        for number in range(1, self.count + 1):
            self._first_ready[number] = asyncio.Event()
            self._slots.append(asyncio.create_task(self._keep(number), name=f"worker-{number}"))
        all_ready = asyncio.create_task(_all_set(list(self._first_ready.values())))
        return await self._until(stop, all_ready)

    @property
    def serving(self) -> int:
        """How many workers serve now (said they were ready and have not exited)."""
        workers = tuple(self._workers.values())  # a copy: /metrics' thread reads this as the loop adds
        return sum(1 for w in workers if w.ready and w.process.returncode is None)

    @property
    def pids(self) -> list[int]:
        """The pid of each worker's latest process, by worker number."""
        return [self._workers[number].pid for number in sorted(self._workers)]

    async def wait(self, stop: asyncio.Event) -> None:
        """Keep the workers running until `stop` is set; raises WorkerError if a replacement fails."""
        await self._until(stop)

    async def stop(self) -> bool:
        """SIGTERM to every worker (each drains as one server does); True if all then exited 0."""
        self._stopping.set()
        for worker in self._workers.values():
            _terminate(worker)
        results = await asyncio.gather(*self._slots, return_exceptions=True)
        return all(result is True for result in results)

    async def _until(self, stop: asyncio.Event, done: asyncio.Task[None] | None = None) -> bool:
        stopped = asyncio.create_task(stop.wait())
        waiting: set[asyncio.Future[Any]] = {stopped, *self._slots}
        if done is not None:
            waiting.add(done)
        try:
            finished, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if done is not None:
                done.cancel()
        for slot in self._slots:
            if slot in finished:
                slot.result()  # a slot ends early only by raising WorkerError
        return done is not None and done in finished and not stop.is_set()

    async def _keep(self, number: int) -> bool:
        """Run worker `number` until the server stops; True if its last one stopped cleanly."""
        loop = asyncio.get_running_loop()
        delay = 0.0
        while not self._stopping.is_set():
            worker = await self._spawn(number)
            if self._stopping.is_set():
                _terminate(worker)
            worker.ready = await _read_ready(worker.control)
            if worker.ready and self._first_ready[number].is_set():
                log.info("worker %d serves again (pid %d)", number, worker.pid)
            elif worker.ready:
                self._first_ready[number].set()
            code = await worker.process.wait()
            await self._forget(worker)
            if self._stopping.is_set():
                # One still starting when SIGTERM came had nothing to drain.
                clean = code == 0 or (not worker.ready and code == -signal.SIGTERM)
                if not clean:
                    log.error("worker %d (pid %d) %s while stopping", number, worker.pid, _exit(code))
                return clean
            if not worker.ready and not self._first_ready[number].is_set():
                raise WorkerError(f"worker {number} (pid {worker.pid}) {_exit(code)} before it served")
            # A replacement that could not start (the database away, a file being rotated) is
            # tried again, as a worker that dies is: the others go on serving meanwhile.
            lived = loop.time() - worker.started
            stable = worker.ready and lived >= _STABLE_SECONDS
            delay = (
                0.0
                if stable
                else min(_MAX_RESTART_DELAY_SECONDS, max(_FIRST_RESTART_DELAY_SECONDS, 2 * delay))
            )
            log.error(
                "worker %d (pid %d) %s %.0f s after it started%s; starting another in %.0f s",
                number,
                worker.pid,
                _exit(code),
                lived,
                "" if worker.ready else ", before it served",
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if not self._stopping.is_set():
                self.restarts += 1
        return True

    async def _spawn(self, number: int) -> _Worker:
        parent_end, child_end = socket.socketpair()
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server",
                "serve",
                WORKER_FD_FLAG,
                str(child_end.fileno()),
                env=dict(self.env),
                stdin=asyncio.subprocess.DEVNULL,
                stderr=write_end,
                pass_fds=(child_end.fileno(),),
                # Out of the terminal's process group: Ctrl-C or a hangup reaches the parent alone,
                # which stops the workers in order (a worker still starting would die mid-way).
                start_new_session=True,
            )
        except OSError as exc:
            parent_end.close()
            os.close(read_end)
            raise WorkerError(f"cannot start worker {number}: {exc}") from None
        finally:
            os.close(write_end)
            child_end.close()
        relay = self.relay(read_end, {"worker": number, "pid": process.pid})
        with contextlib.suppress(OSError):  # it died at once: _read_ready sees that
            parent_end.sendall(self.orders.encode())
        parent_end.setblocking(False)
        worker = _Worker(number, process, parent_end, relay, asyncio.get_running_loop().time())
        self._workers[number] = worker
        return worker

    async def _forget(self, worker: _Worker) -> None:
        worker.control.close()
        if self.on_exit is not None:
            self.on_exit(worker.pid)
        # Its last lines reach stderr before the parent logs anything about its exit.
        await asyncio.to_thread(worker.relay.join, _RELAY_DRAIN_SECONDS)


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


async def _read_ready(control: socket.socket) -> bool:
    """True when the worker said it serves; False when it exited first (EOF)."""
    received = b""
    loop = asyncio.get_running_loop()
    while not received.endswith(b"\n"):
        try:
            chunk = await loop.sock_recv(control, 64)
        except OSError:  # ECONNRESET: it died with its orders unread
            return False
        if not chunk:
            return False
        received += chunk
    return received == _READY


def _terminate(worker: _Worker) -> None:
    if worker.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)


def _exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"
