"""Opaque page tokens and stream cursors: one versioned format, one strict parser.

A token is base64url (no padding) of ASCII `<kind>|<part>|<part>...`, the kind naming what the
token pages and its version (`t1`: ListTransfers). Each part is parsed by its declared type with
an ASCII pattern and a range check, so a forged token (20-digit or Unicode digits, `1e30`,
a NUL, a snapshot PostgreSQL would refuse) is INVALID_ARGUMENT, never a database error.
Tokens are not signed: what one names is always re-checked against the caller's own rows.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from server.errors import InvalidArgumentError
from server.validation import INT64_MAX

MAX_TOKEN_CHARS = 512
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}}")
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_WORD = re.compile(r"[a-z0-9_]{0,32}")
_CURRENCY = re.compile(r"(?:[A-Z]{3})?")
_SNAPSHOT = re.compile(r"([0-9]{1,19}):([0-9]{1,19}):((?:[0-9]{1,19}(?:,[0-9]{1,19})*)?)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_MICROS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_LAST_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


class _Forged(ValueError):
    pass


def _int(raw: str, low: int = 0, high: int = INT64_MAX) -> int:
    if _INT.fullmatch(raw) is None:
        raise _Forged
    value = int(raw)
    if not low <= value <= high:
        raise _Forged
    return value


def _matching(pattern: re.Pattern[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if pattern.fullmatch(raw) is None:
            raise _Forged
        return raw

    return parse


def _moment(raw: str) -> datetime:
    return _EPOCH + timedelta(microseconds=_int(raw, _FIRST_MICROS, _LAST_MICROS))


def _snapshot(raw: str) -> str:
    """A pg_snapshot text as PostgreSQL's own input function accepts it."""
    match = _SNAPSHOT.fullmatch(raw)
    if match is None:
        raise _Forged
    xmin, xmax = _int(match[1]), _int(match[2])
    running = [_int(x) for x in match[3].split(",")] if match[3] else []
    if not 0 < xmin <= xmax or any(not xmin <= x < xmax for x in running) or running != sorted(set(running)):
        raise _Forged
    # An xid8 whose low 32 bits are zero is no valid transaction id: PostgreSQL refuses it.
    if any(value & 0xFFFF_FFFF == 0 for value in (xmin, xmax, *running)):
        raise _Forged
    return raw


def _flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise _Forged
    return raw == "1"


@dataclass(frozen=True, slots=True)
class Part:
    """One typed part of a token: how it is written and how it is read back."""

    parse: Callable[[str], Any]
    write: Callable[[Any], str] = str


INT = Part(_int)
UUID = Part(_matching(_UUID))
WORD = Part(_matching(_WORD))
CURRENCY = Part(_matching(_CURRENCY))
SNAPSHOT = Part(_snapshot)
FLAG = Part(_flag, lambda value: "1" if value else "0")
MOMENT = Part(_moment, lambda value: str((value - _EPOCH) // timedelta(microseconds=1)))


@dataclass(frozen=True, slots=True)
class TokenKind:
    """What one kind of token holds, under its versioned tag."""

    tag: str
    parts: tuple[Part, ...]

    def encode(self, *values: Any) -> str:
        """The opaque token for these values."""
        assert len(values) == len(self.parts)
        text = "|".join(
            [self.tag, *(part.write(value) for part, value in zip(self.parts, values, strict=True))]
        )
        return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")

    def decode(self, token: str, field: str = "page_token") -> tuple[Any, ...]:
        """The values of a token this server issued, or InvalidArgumentError naming `field`."""
        try:
            raw = _unwrap(token)
            tag, *parts = raw.split("|")
            if tag != self.tag or len(parts) != len(self.parts):
                raise _Forged
            return tuple(part.parse(text) for part, text in zip(self.parts, parts, strict=True))
        except _Forged:
            raise InvalidArgumentError.field(field, "is not a token this server issued") from None


def _unwrap(token: str) -> str:
    if _TOKEN.fullmatch(token) is None:
        raise _Forged
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _Forged from None


def kinds(*defined: TokenKind) -> Sequence[TokenKind]:
    """Check that no two token kinds share a tag (a token must never read as another kind)."""
    tags = [kind.tag for kind in defined]
    assert len(set(tags)) == len(tags), tags
    return defined


# Every token and cursor the server hands out.
ACCOUNTS = TokenKind("a1", (CURRENCY,))  # ListAccounts: the currency a page starts after
TRANSFERS = TokenKind("t1", (INT, WORD, CURRENCY))  # ListTransfers: seq bound, direction, currency
WATCH = TokenKind("w1", (INT, INT))  # WatchTransfers cursor: ledger event (xid, seq)
MESSAGES = TokenKind("m1", (UUID, FLAG, INT))  # ListMessages: room, forward, sequence bound
ROOMS = TokenKind("r1", (MOMENT, UUID, SNAPSHOT))  # ListRooms: activity, room id, first page's snapshot
ALL = kinds(ACCOUNTS, TRANSFERS, WATCH, MESSAGES, ROOMS)
