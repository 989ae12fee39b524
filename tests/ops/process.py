"""`python -m server` as a child process: start it, follow its JSON log on stderr, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import REPO, TEST_JWT_SECRET

START_TIMEOUT_SECONDS = 30.0
_SERVING = re.compile(r"serving gRPC on \S+ \(port (\d+)\)")
_METRICS = re.compile(r"metrics on http://[^:]+:(\d+)/metrics")


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
        settings = {
            "DATABASE_URL": database_url,
            "SENDINCHAT_JWT_SECRET": TEST_JWT_SECRET,
            "SENDINCHAT_ADDRESS": "127.0.0.1:0",
            "SENDINCHAT_METRICS_ADDRESS": "off",
            "SENDINCHAT_BCRYPT_ROUNDS": "4",
            "SENDINCHAT_SHUTDOWN_GRACE_SECONDS": "5",
            **env,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
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
        process = await ServerProcess.start(database_url, **env)
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
