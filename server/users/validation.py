"""Rules for usernames, passwords and display names."""

from __future__ import annotations

import re

from server.auth.passwords import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES
from server.errors import InvalidArgumentError
from server.validation import Fields, Text

_USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
DISPLAY_NAME = Text(max_chars=64, strip=True, visible=True)


def normalize_username(raw: str, field: str = "username") -> str:
    """The stored (lower-case) form of a username, or InvalidArgumentError."""
    username = raw.strip().lower()
    # ASCII before folding: str.lower() maps some other letters into a-z (KELVIN SIGN to "k").
    if not raw.isascii() or not _USERNAME.match(username):
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
    """A trimmed display name of at most 64 characters, empty or showing something (the text rule)."""
    fields = Fields()
    name = fields.text("display_name", raw, DISPLAY_NAME)
    fields.done()
    return name
