"""Where a Client keeps its token pair, so that later runs and other processes share one session."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sendinchat.v1 import users_pb2

__all__ = ["TokenStore"]


class TokenStore(Protocol):
    """A place for one session's token pair (a file, a keyring, a secrets service).

    A refresh token works once: presenting a used one ends the whole session. So every holder of
    the session refreshes under `lock()`, reloads first, and uses a pair someone else already
    rotated instead of rotating again. The Client does exactly that.
    """

    def load(self) -> users_pb2.TokenPair | None:
        """The stored pair, or None when logged out."""
        ...

    def save(self, tokens: users_pb2.TokenPair | None) -> None:
        """Store a new pair; None forgets the session."""
        ...

    def lock(self) -> AbstractAsyncContextManager[None]:
        """Exclusive access to the pair across every process that shares it, while refreshing."""
        ...
