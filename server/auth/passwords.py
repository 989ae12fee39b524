"""bcrypt hashing, run in worker threads so the event loop never waits on it."""

from __future__ import annotations

import asyncio

import bcrypt

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (5.x: rejects) anything longer


class PasswordHasher:
    """Hashes and checks passwords at a fixed bcrypt cost."""

    def __init__(self, rounds: int) -> None:
        self._rounds = rounds
        # Checked against when the user does not exist, so that an unknown username costs the
        # same bcrypt time as a wrong password.
        self._decoy = bcrypt.hashpw(b"decoy-password", bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        """A bcrypt hash of `password` (8-72 bytes, checked by the caller)."""
        salt = bcrypt.gensalt(self._rounds)
        digest = await asyncio.to_thread(bcrypt.hashpw, password.encode(), salt)
        return digest.decode()

    async def verify(self, password: str, stored_hash: str | None) -> bool:
        """True when `password` matches; spends the same time when there is no stored hash."""
        candidate = password.encode()
        # No stored password is longer than 72 bytes, so a longer one never matches (rather than
        # matching on its first 72 bytes); it still costs one bcrypt check, so timing tells nothing.
        fits = len(candidate) <= MAX_PASSWORD_BYTES
        target = self._decoy if stored_hash is None else stored_hash.encode()
        matches = await asyncio.to_thread(bcrypt.checkpw, candidate[:MAX_PASSWORD_BYTES], target)
        return matches and fits and stored_hash is not None
