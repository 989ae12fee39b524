"""The CLI's saved sessions: one token pair per server, in a 0600 file of the user's config directory.

The directory is $SENDINCHAT_CONFIG_DIR, else $XDG_CONFIG_HOME/sendinchat, else
~/.config/sendinchat. Every `sendinchat-cli` process of the user shares the file, and a refresh
token works once, so refreshing happens under an exclusive lock on a sibling lock file, and a
pair another process has just rotated is taken rather than rotated again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from sendinchat.v1 import users_pb2

SESSIONS_FILE = "sessions.json"
_LOCK_FILE = "sessions.lock"
_LOCK_POLL_SECONDS = 0.02


def _fingerprint(refresh_token: str) -> str:
    """Which refresh token a kept request_id belongs to, without a second copy of the token."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def config_dir() -> Path:
    """Where the CLI keeps its files (see the module docstring)."""
    override = os.environ.get("SENDINCHAT_CONFIG_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "sendinchat"


class SessionFile:
    """The saved session for one server (target): a TokenStore for the SDK's Client."""

    def __init__(self, target: str, directory: Path | None = None) -> None:
        self.target = target
        self.directory = directory or config_dir()
        self.path = self.directory / SESSIONS_FILE
        self._held = False

    @property
    def username(self) -> str | None:
        """Who is logged in to this server, if anyone."""
        entry = self._read().get(self.target)
        return None if entry is None else str(entry.get("username", ""))

    def load(self) -> users_pb2.TokenPair | None:
        """The saved pair for this server, or None."""
        entry = self._read().get(self.target)
        if entry is None:
            return None
        return json_format.ParseDict(entry["tokens"], users_pb2.TokenPair())

    def save(self, tokens: users_pb2.TokenPair | None, *, username: str | None = None) -> None:
        """Save (or, with None, forget) this server's pair; the username is kept unless given."""
        with self._exclusive():
            sessions = self._read()
            if tokens is None:
                sessions.pop(self.target, None)
            else:
                entry = sessions.get(self.target, {})
                sessions[self.target] = {
                    "username": username or entry.get("username", ""),
                    "tokens": json_format.MessageToDict(tokens),
                }
            self._write(sessions)

    def load_rotation(self, refresh_token: str) -> str | None:
        """The request_id kept for rotating this refresh token (KeepsRotation), if any."""
        rotation = self._read().get(self.target, {}).get("rotation")
        if not isinstance(rotation, dict) or rotation.get("for") != _fingerprint(refresh_token):
            return None
        request_id = rotation.get("request_id")
        try:
            return str(uuid.UUID(request_id)) if isinstance(request_id, str) else None
        except ValueError:  # damaged: as if none was kept
            return None

    def save_rotation(self, refresh_token: str, request_id: str) -> None:
        """Keep the request_id of this token's rotation; saving the next pair forgets it."""
        with self._exclusive():
            sessions = self._read()
            entry = sessions.get(self.target)
            if entry is not None:
                entry["rotation"] = {"for": _fingerprint(refresh_token), "request_id": request_id}
                self._write(sessions)

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """Hold the lock every process of the user takes before refreshing."""
        fd = self._open_lock()
        try:
            while True:  # polled, not waited for in a thread: Ctrl-C still leaves at once
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_LOCK_POLL_SECONDS)
            self._held = True
            try:
                yield
            finally:
                self._held = False
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._held:  # a second flock of the same file by this process would wait for itself
            yield
            return
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable or damaged: as if logged out; the next login rewrites it
        return data if isinstance(data, dict) else {}

    def _write(self, sessions: dict[str, dict[str, Any]]) -> None:
        if not sessions:
            self.path.unlink(missing_ok=True)
            return
        scratch = self.path.with_name(f".{SESSIONS_FILE}.{os.getpid()}")
        # Created 0600 before anything is written: the tokens are never readable by others.
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(sessions, out, indent=2)
        os.replace(scratch, self.path)
