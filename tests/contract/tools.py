"""Run the dev tools (buf, grpcurl, hadolint) the contract tests need, failing loudly when one is missing.

The project installs them into its venv, so they are found next to the running interpreter: an
activated venv (and so `PATH`) is never needed, as the README's commands promise.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import REPO

TOOL_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Result:
    """A finished tool run."""

    returncode: int
    stdout: str
    stderr: str


BIN_DIR = Path(sys.executable).parent


def require(tool: str) -> str:
    """The tool's path (a name is looked up next to the interpreter, never on `PATH`).

    The tools are dev dependencies, so a missing one fails the test instead of skipping it.
    """
    if Path(tool).is_absolute():
        return tool
    path = BIN_DIR / tool
    if not path.is_file():
        pytest.fail(f"{tool} is not in {BIN_DIR}; it is a dev dependency: pip install -e '.[dev]'")
    return str(path)


async def run(tool: str, *args: str, cwd: Path = REPO, env: Mapping[str, str] | None = None) -> Result:
    """Run a tool without blocking the event loop (an in-process test server keeps serving)."""
    process = await asyncio.create_subprocess_exec(
        require(tool),
        *args,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TOOL_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())
