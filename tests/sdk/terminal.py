"""sendinchat-cli in a real terminal: a pseudo-terminal whose other end the test reads and types into.

The CLI runs as the session leader of the pty, with it as its controlling terminal, so getpass
prompts on it and Ctrl-C (a 0x03 typed into it) reaches the CLI as SIGINT, as in a shell.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import struct
import sys
import termios
from collections.abc import Mapping

WAIT_SECONDS = 10.0

# setsid, then take the pty (stdin) as controlling terminal, then become the CLI.
_LAUNCH = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'sendinchat.cli', *sys.argv[1:]])"
)


class Terminal:
    """One CLI process on a pty: `expect()` what it shows, `type()` into it, `interrupt()` it."""

    def __init__(self) -> None:
        self.screen = ""
        self._seen = 0
        self._master = -1
        self._changed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, *args: str, env: Mapping[str, str]) -> None:
        """Run `sendinchat-cli ARGS` on a new 40x120 pty."""
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _LAUNCH, *args, stdin=slave, stdout=slave, stderr=slave, env=dict(env)
            )
        finally:
            os.close(slave)
        asyncio.get_running_loop().add_reader(self._master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every process on the pty has closed it
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
        self.screen += data.decode(errors="replace").replace("\r\n", "\n")
        self._changed.set()

    async def expect(self, pattern: str) -> re.Match[str]:
        """Wait until the output after the last match shows `pattern` (a regex)."""
        regex = re.compile(pattern)
        async with asyncio.timeout(WAIT_SECONDS):
            while (found := regex.search(self.screen, self._seen)) is None:
                self._changed.clear()
                await self._changed.wait()
        self._seen = found.end()
        return found

    def type(self, text: str) -> None:
        """Keystrokes; end a line with a carriage return, as the Enter key does."""
        os.write(self._master, text.encode())

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.type("\x03")

    async def exit_status(self) -> int:
        """Wait for the CLI to end (WAIT_SECONDS at most) and return its exit status."""
        assert self._process is not None
        async with asyncio.timeout(WAIT_SECONDS):
            return await self._process.wait()

    async def close(self) -> None:
        """Kill the CLI if it still runs and close the pty."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = -1
