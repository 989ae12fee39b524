"""Where a Client keeps its token pair, so that later runs and other processes share one session."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from sendinchat.v1 import users_pb2

__all__ = ["KeepsRotation", "TokenStore"]


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


@runtime_checkable
class KeepsRotation(Protocol):
    """A TokenStore that also keeps the request_id of a refresh under way (optional, recommended).

    A refresh whose reply was lost is the same request only when it is retried with the same
    request_id; a retry with another id is a reuse, which ends the session. A store with these two
    methods lets the next Client or process sharing it (the CLI's next run) retry with that id.
    Both are called under `lock()`; `save` of a new pair forgets the kept id.
    """

    def load_rotation(self, refresh_token: str) -> str | None:
        """The request_id kept for rotating this refresh token, if any."""
        ...

    def save_rotation(self, refresh_token: str, request_id: str) -> None:
        """Keep the request_id of a rotation of this refresh token, until a new pair is saved."""
        ...
