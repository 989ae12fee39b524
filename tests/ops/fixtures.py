"""Fixtures for tests that run the server as a child process (imported by the conftests that use them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.ops.process import ServerProcesses, embedded_data_dirs, server_processes


@pytest_asyncio.fixture(loop_scope="session")
async def processes() -> AsyncIterator[ServerProcesses]:
    """Start `python -m server` processes; any still running are killed after the test."""
    async for launcher in server_processes():
        yield launcher


@pytest_asyncio.fixture(loop_scope="session")
async def embedded_data_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """A data folder for an embedded-mode server; a PostgreSQL left running there is stopped after."""
    async for data_dir in embedded_data_dirs(tmp_path):
        yield data_dir
