"""Input rules for chat requests, and the opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from server.errors import InvalidArgumentError
from server.users.validation import parse_uuid

MAX_TEXT = 4000
MAX_CLIENT_MESSAGE_ID = 64
MAX_ROOM_NAME = 100
MAX_MEMBERS = 100
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50

__all__ = [
    "check_client_message_id",
    "check_text",
    "decode_token",
    "encode_token",
    "page_size",
    "parse_uuid",
    "room_name",
    "token_snapshot",
    "token_time",
    "user_ids",
]


def check_text(text: str, field: str = "text") -> str:
    """A message text of 1-4000 characters that is not only whitespace."""
    if not text.strip():
        raise InvalidArgumentError.field(field, "must not be empty")
    if len(text) > MAX_TEXT:
        raise InvalidArgumentError.field(field, f"must be at most {MAX_TEXT} characters")
    return text


def check_client_message_id(raw: str, *, required: bool, field: str = "client_message_id") -> str | None:
    """A client message id of 1-64 characters, or None when optional and empty."""
    if not raw:
        if required:
            raise InvalidArgumentError.field(field, "required")
        return None
    if len(raw) > MAX_CLIENT_MESSAGE_ID:
        raise InvalidArgumentError.field(field, f"must be at most {MAX_CLIENT_MESSAGE_ID} characters")
    return raw


def room_name(raw: str) -> str:
    """A trimmed group name of 1-100 characters."""
    name = raw.strip()
    if not name:
        raise InvalidArgumentError.field("name", "required for a group")
    if len(name) > MAX_ROOM_NAME:
        raise InvalidArgumentError.field("name", f"must be at most {MAX_ROOM_NAME} characters")
    return name


def user_ids(raw: list[str] | tuple[str, ...], field: str) -> list[str]:
    """Canonical, de-duplicated user ids in the given order (at most 100)."""
    if len(raw) > MAX_MEMBERS:
        raise InvalidArgumentError.field(field, f"at most {MAX_MEMBERS} users")
    seen: dict[str, None] = {}
    for index, value in enumerate(raw):
        seen[parse_uuid(value, f"{field}[{index}]")] = None
    return list(seen)


def page_size(raw: int) -> int:
    """1-100; 0 means the default."""
    if raw == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= raw <= MAX_PAGE_SIZE:
        raise InvalidArgumentError.field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return raw


def encode_token(payload: dict[str, Any]) -> str:
    """An opaque page token."""
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_token(token: str) -> dict[str, Any]:
    """The payload of a page token from encode_token, or InvalidArgumentError."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidArgumentError.field("page_token", "malformed") from None
    if not isinstance(payload, dict):
        raise InvalidArgumentError.field("page_token", "malformed")
    return payload


def token_time(raw: str) -> datetime:
    """A page token's timestamp, in UTC (ValueError or OverflowError if malformed or naive)."""
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        raise ValueError("naive timestamp")
    return moment.astimezone(UTC)


_SNAPSHOT = re.compile(r"([0-9]{1,19}):([0-9]{1,19}):((?:[0-9]{1,19}(?:,[0-9]{1,19})*)?)")


def token_snapshot(raw: str) -> str:
    """A page token's pg_snapshot text, checked as PostgreSQL's input checks it (else ValueError)."""
    match = _SNAPSHOT.fullmatch(raw)
    if match is None:
        raise ValueError("malformed snapshot")
    xmin, xmax = int(match[1]), int(match[2])
    running = [int(x) for x in match[3].split(",")] if match[3] else []
    if not 0 < xmin <= xmax or any(not xmin <= x < xmax for x in running) or running != sorted(set(running)):
        raise ValueError("malformed snapshot")
    return raw
