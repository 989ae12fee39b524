"""Running sendinchat-cli as a user does: a subprocess with its own config directory and server."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.contract.tools import TOOL_TIMEOUT_SECONDS, Result
from tests.helpers import PASSWORD

_OURS = ("SENDINCHAT_TOKEN", "SENDINCHAT_CONFIG_DIR", "SENDINCHAT_TARGET", "XDG_CONFIG_HOME")


def cli_env(address: str, config_dir: Path | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI talking to `address`, keeping its session in config_dir."""
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env.update(SENDINCHAT_TARGET=address, TERM="dumb", PYTHONUNBUFFERED="1", **extra)
    if config_dir is not None:
        env["SENDINCHAT_CONFIG_DIR"] = str(config_dir)
    return env


async def run_cli(env: Mapping[str, str], *args: str, stdin: str = "") -> Result:
    """Run `sendinchat-cli ARGS` with `stdin` as its input, without blocking the test's server."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sendinchat.cli",
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TOOL_TIMEOUT_SECONDS):
            stdout, stderr = await process.communicate(stdin.encode())
    finally:
        if process.returncode is None:  # timed out: leave no process behind
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


async def logged_in_env(address: str, config_dir: Path, username: str) -> dict[str, str]:
    """The environment of a CLI on which `sendinchat-cli login USERNAME` has succeeded."""
    env = cli_env(address, config_dir)
    result = await run_cli(env, "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    return env
