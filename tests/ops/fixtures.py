"""Fixtures for tests that run the server as a child process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.ops.process import ServerProcesses, server_processes


@pytest_asyncio.fixture(loop_scope="session")
async def processes() -> AsyncIterator[ServerProcesses]:
    """Start `python -m server` processes; any still running are killed after the test."""
    async for launcher in server_processes():
        yield launcher
