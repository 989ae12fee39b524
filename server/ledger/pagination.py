"""Opaque page tokens and watch cursors: versioned, base64url, refused with INVALID_ARGUMENT when forged."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from server.errors import InvalidArgumentError

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def page_size(requested: int) -> int:
    """The page size to use: 0 means the default; 1-100 is allowed."""
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgumentError.field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return requested


def _encode(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decode(token: str, field: str, prefix: str, count: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgumentError.field(field, "is not a token this server issued") from None
    parts = raw.split("|")
    if len(parts) != count + 1 or parts[0] != prefix:
        raise InvalidArgumentError.field(field, "is not a token this server issued")
    return parts[1:]


def _int(raw: str, field: str) -> int:
    if not raw.isdigit():
        raise InvalidArgumentError.field(field, "is not a token this server issued")
    return int(raw)


def encode_transfers_token(before_seq: int, filters: str) -> str:
    """Token for the next ListTransfers page: transfers with seq below `before_seq`, same filters."""
    return _encode("t1", str(before_seq), filters)


def decode_transfers_token(token: str, filters: str) -> int | None:
    """The seq bound of a ListTransfers token (None for the first page)."""
    if not token:
        return None
    seq, token_filters = _decode(token, "page_token", "t1", 2)
    if token_filters != filters:
        raise InvalidArgumentError.field("page_token", "was issued for other filters")
    return _int(seq, "page_token")


def encode_accounts_token(after_currency: str) -> str:
    """Token for the next ListAccounts page."""
    return _encode("a1", after_currency)


def decode_accounts_token(token: str) -> str | None:
    """The currency a ListAccounts page starts after (None for the first page)."""
    if not token:
        return None
    (currency,) = _decode(token, "page_token", "a1", 1)
    return currency


@dataclass(frozen=True, order=True, slots=True)
class EventKey:
    """A position in the ledger event log: (transaction id, sequence), totally ordered."""

    xid: int
    seq: int

    def encode(self) -> str:
        """The opaque cursor handed to WatchTransfers clients."""
        return _encode("w1", str(self.xid), str(self.seq))

    @classmethod
    def decode(cls, cursor: str) -> EventKey:
        """Parse a cursor, or InvalidArgumentError on field `cursor`."""
        xid, seq = _decode(cursor, "cursor", "w1", 2)
        return cls(_int(xid, "cursor"), _int(seq, "cursor"))
