"""Who is calling: set by the auth interceptor, read by servicers."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """A user's role, as stored in users.role."""

    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one RPC."""

    user_id: str
    role: Role
    session_id: str
    expires_at: float

    @property
    def is_admin(self) -> bool:
        """True for admins."""
        return self.role is Role.ADMIN


_current: ContextVar[Principal | None] = ContextVar("sendinchat_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being handled; only valid inside an authenticated method."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no authenticated principal: is this method in the public allowlist?")
    return principal


def set_principal(principal: Principal | None) -> None:
    """Bind the caller for the rest of this RPC's task."""
    _current.set(principal)
