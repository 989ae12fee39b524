"""`python -m server` as a child process: start it, follow its JSON log on stderr, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import REPO, TEST_JWT_SECRET

START_TIMEOUT_SECONDS = 30.0
_SERVING = re.compile(r"serving gRPC on \S+ \(port (\d+)\)")
_METRICS = re.compile(r"metrics on http://[^:]+:(\d+)/metrics")
ISO_MILLIS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def server_env(**overrides: str) -> dict[str, str]:
    """This process's environment without SENDINCHAT_* and DATABASE_URL, plus `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SENDINCHAT_") and key != "DATABASE_URL"
    }
    env.update(overrides)
    return env


class ServerProcess:
    """One running `python -m server`; stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, database_url: str, **env: str) -> ServerProcess:
        """Start a server on a free port of 127.0.0.1 (metrics off unless `env` says otherwise)."""
        return await cls.spawn(
            [sys.executable, "-m", "server"],
            DATABASE_URL=database_url,
            SENDINCHAT_JWT_SECRET=TEST_JWT_SECRET,
            **env,
        )

    @classmethod
    async def start_embedded(cls, data_dir: Path, **env: str) -> ServerProcess:
        """Start a server in embedded mode: its own PostgreSQL in `data_dir` (see embedded_data_dir)."""
        return await cls.spawn([sys.executable, "-m", "server"], SENDINCHAT_DATA_DIR=str(data_dir), **env)

    @classmethod
    async def spawn(cls, argv: Sequence[str], **env: str) -> ServerProcess:
        """Run `argv` (a server command, say the README's through `bash -c`) with the test settings.

        A free port of 127.0.0.1, metrics off, cheap bcrypt, a short grace; `env` overrides them.
        """
        settings = {
            "SENDINCHAT_ADDRESS": "127.0.0.1:0",
            "SENDINCHAT_METRICS_ADDRESS": "off",
            "SENDINCHAT_BCRYPT_ROUNDS": "4",
            "SENDINCHAT_SHUTDOWN_GRACE_SECONDS": "5",
            **env,
        }
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            env=server_env(**settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return "\n".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """The stderr lines that are JSON objects (the server's log)."""
        found = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed; fails on the first that is not a JSON log line."""
        records = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
            assert isinstance(record, dict), line
            assert ISO_MILLIS_UTC.fullmatch(str(record.get("time"))), line
            assert {"level", "logger", "message"} <= record.keys(), line
            records.append(record)
        return records

    async def wait_for_log(
        self, pattern: re.Pattern[str], seconds: float = START_TIMEOUT_SECONDS
    ) -> re.Match[str]:
        """The first log message matching `pattern`; fails if the process exits or time runs out."""
        async with asyncio.timeout(seconds):
            while True:
                for record in self.records():
                    match = pattern.search(str(record.get("message", "")))
                    if match is not None:
                        return match
                if self.process.returncode is not None:
                    raise AssertionError(f"server exited with {self.process.returncode}:\n{self.stderr}")
                await asyncio.sleep(0.05)

    async def wait_serving(self) -> str:
        """Wait for the 'serving' log line and health SERVING; return host:port."""
        port = (await self.wait_for_log(_SERVING)).group(1)
        address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)  # the typeshed stub declares no methods
            reply = await health.Check(
                health_pb2.HealthCheckRequest(), timeout=START_TIMEOUT_SECONDS, wait_for_ready=True
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return address

    async def metrics_port(self) -> int:
        """The port of the /metrics endpoint, from the log."""
        return int((await self.wait_for_log(_METRICS)).group(1))

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, seconds: float = 20.0) -> int:
        """Wait for the process to exit and stderr to be read; return the exit code."""
        code = await asyncio.wait_for(self.process.wait(), seconds)
        await asyncio.wait_for(self._reader, seconds)
        return code

    async def kill(self) -> None:
        """Make sure the process is gone (test cleanup)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class ServerProcesses:
    """Starts server processes for one test and kills any left running afterwards."""

    def __init__(self) -> None:
        self._started: list[ServerProcess] = []

    async def start(self, database_url: str, **env: str) -> ServerProcess:
        """A new server process (see ServerProcess.start)."""
        return self._track(await ServerProcess.start(database_url, **env))

    async def start_embedded(self, data_dir: Path, **env: str) -> ServerProcess:
        """A new server process with its own PostgreSQL (see ServerProcess.start_embedded)."""
        return self._track(await ServerProcess.start_embedded(data_dir, **env))

    async def spawn(self, argv: Sequence[str], **env: str) -> ServerProcess:
        """A new server process running `argv` (see ServerProcess.spawn)."""
        return self._track(await ServerProcess.spawn(argv, **env))

    def _track(self, process: ServerProcess) -> ServerProcess:
        self._started.append(process)
        return process

    async def close(self) -> None:
        """Kill whatever still runs."""
        for process in self._started:
            await process.kill()


async def server_processes() -> AsyncIterator[ServerProcesses]:
    """Yield a launcher and clean it up afterwards."""
    launcher = ServerProcesses()
    try:
        yield launcher
    finally:
        await launcher.close()


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the embedded PostgreSQL running in `data_dir`, if one runs."""
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """Whether a process runs as `pid` (this test's processes are reaped, so no zombie is counted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def stop_leftover_postgres(data_dir: Path, seconds: float = 20.0) -> None:
    """Stop (immediate shutdown) an embedded PostgreSQL that a failed test left running in `data_dir`."""
    pid = postmaster_pid(data_dir)
    if pid is None:
        return
    os.kill(pid, signal.SIGQUIT)
    await wait_gone(pid, seconds)


async def wait_gone(pid: int, seconds: float = 20.0) -> None:
    """Wait until no process runs as `pid`; TimeoutError after `seconds`."""
    async with asyncio.timeout(seconds):
        while True:
            if not pid_alive(pid):
                return
            await asyncio.sleep(0.05)


async def embedded_data_dirs(root: Path) -> AsyncIterator[Path]:
    """Yield a fresh SENDINCHAT_DATA_DIR under `root`; afterwards, stop any PostgreSQL left in it."""
    data_dir = root / "data"
    data_dir.mkdir()
    try:
        yield data_dir
    finally:
        await stop_leftover_postgres(data_dir)


def run_server_command(*args: str, env: Mapping[str, str]) -> tuple[int, str]:
    """Run `python -m server ARGS` to completion (for quick-failing commands); return (code, stderr)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr
