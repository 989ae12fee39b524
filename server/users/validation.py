"""Rules for usernames, passwords and display names."""

from __future__ import annotations

import re
import unicodedata

from server.auth.passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES
from server.errors import InvalidArgumentError

_USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
MAX_DISPLAY_NAME = 64


def normalize_username(raw: str, field: str = "username") -> str:
    """The stored (lower-case) form of a username, or InvalidArgumentError."""
    username = raw.strip().lower()
    if not _USERNAME.match(username):
        raise InvalidArgumentError.field(field, "must be 3-32 characters of a-z, 0-9, '_', '.', '-'")
    return username


def check_password(password: str, field: str = "password") -> None:
    """Refuse passwords bcrypt cannot hash faithfully (never truncate silently)."""
    size = len(password.encode())
    if size < MIN_PASSWORD_BYTES:
        raise InvalidArgumentError.field(field, f"must be at least {MIN_PASSWORD_BYTES} bytes")
    if size > MAX_PASSWORD_BYTES:
        raise InvalidArgumentError.field(
            field, f"must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)"
        )


def normalize_display_name(raw: str) -> str:
    """A trimmed display name of at most 64 printable characters."""
    name = raw.strip()
    if len(name) > MAX_DISPLAY_NAME:
        raise InvalidArgumentError.field("display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidArgumentError.field("display_name", "must not contain control characters")
    return name
