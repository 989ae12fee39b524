"""Field rules, one place per kind of value; each service collects its request's violations with Fields.

The shape every request must have whatever its fields mean (no NUL, bounded strings, known enum
numbers, valid timestamps) is checked before any handler runs (server/boundary.py). What a field
means is checked here: lengths, UUIDs, ranges, page sizes, how far ahead an expiry may be. A text
that lands in an index is bounded below PostgreSQL's index row limit (2,704 bytes).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from server.errors import InvalidArgumentError

T = TypeVar("T")

INT64_MAX = 2**63 - 1
# UTF-8 takes at most 4 bytes a character: an indexed text of N characters is at most 4N bytes.
MAX_INDEXED_BYTES = 2000
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
# How far ahead a pending transfer or a payment request may expire.
MAX_EXPIRY_AHEAD = timedelta(days=365)
# Hex digits only (uuid.UUID alone also takes braces, "urn:uuid:", underscores and non-ASCII digits).
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
# Control characters (Unicode Cc: C0, DEL, C1), which a terminal or a log may act on; a multi-line
# text keeps tabs and line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# What a one-line text (a name, a memo) has no use for: bidirectional embeddings, overrides and
# isolates, which reorder the text shown around them, and the Unicode line and paragraph separators.
_NOT_ONE_LINE = re.compile(r"[\u202a-\u202e\u2066-\u2069\u2028\u2029]")
# A visible character is a letter, digit, punctuation or symbol (categories L, N, P, S), less the
# ones that show nothing: Hangul fillers, the blank braille pattern.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


@dataclass(frozen=True, slots=True)
class Text:
    """The rule for one kind of text field (lengths in characters).

    No text may hold control characters (a multi-line one keeps tabs and line breaks); a
    single-line one no line separators or bidirectional controls either; a `visible` one, when
    not empty, must show something.
    """

    max_chars: int
    min_chars: int = 0
    indexed: bool = False
    strip: bool = False
    multiline: bool = False
    visible: bool = False

    def __post_init__(self) -> None:
        if self.indexed and self.max_chars * 4 > MAX_INDEXED_BYTES:
            raise ValueError(f"an indexed text of {self.max_chars} characters may pass the index row limit")


class Fields:
    """Collects every violation of one request, so the caller learns them all at once."""

    def __init__(self) -> None:
        self.violations: dict[str, str] = {}

    def add(self, field: str, why: str) -> None:
        """Record a violation (the first one per field is kept)."""
        self.violations.setdefault(field, why)

    def done(self) -> None:
        """Raise InvalidArgumentError with every violation, if there is any."""
        if self.violations:
            raise InvalidArgumentError(self.violations)

    def check(self, rule: Callable[[], T], default: T) -> T:
        """Run a rule that raises InvalidArgumentError; collect its violations and return `default` then."""
        try:
            return rule()
        except InvalidArgumentError as exc:
            for field, why in exc.violations.items():
                self.add(field, why)
            return default

    def text(self, field: str, raw: str, rule: Text) -> str:
        """A text within its rule's lengths (stripped first if the rule says so)."""
        value = raw.strip() if rule.strip else raw
        if len(value) < rule.min_chars:
            self.add(
                field, "required" if rule.min_chars == 1 else f"must be at least {rule.min_chars} characters"
            )
        elif len(value) > rule.max_chars:
            self.add(field, f"must be at most {rule.max_chars} characters")
        elif (_CONTROL_BUT_LINES if rule.multiline else _CONTROL).search(value):
            self.add(field, "must not contain control characters")
        elif not rule.multiline and _NOT_ONE_LINE.search(value):
            self.add(field, "must be one line, without bidirectional control characters")
        elif rule.visible and value and not any(_shows(ch) for ch in value):
            self.add(field, "must contain a visible character")
        return value

    def uuid(self, field: str, raw: str) -> str:
        """The canonical (lower-case, hyphenated) form of a UUID written in ASCII hex digits."""
        if _UUID.fullmatch(raw) is None:
            self.add(field, "must be a UUID")
            return ""
        return str(uuid.UUID(raw))

    def integer(self, field: str, value: int, low: int, high: int) -> int:
        """An integer in [low, high]."""
        if not low <= value <= high:
            self.add(field, f"must be between {low} and {high}")
        return value

    def member(self, field: str, raw: str, allowed: Collection[str], why: str) -> str:
        """One of a fixed set of values."""
        if raw not in allowed:
            self.add(field, why)
        return raw

    def page_size(self, requested: int, field: str = "page_size") -> int:
        """1-100; 0 means the default."""
        if requested == 0:
            return DEFAULT_PAGE_SIZE
        return self.integer(field, requested, 1, MAX_PAGE_SIZE)

    def expiry(self, field: str, moment: datetime | None) -> datetime | None:
        """An optional expiry at most MAX_EXPIRY_AHEAD from now.

        That it lies in the future is checked where the request's earlier answer is looked up (the
        SQL functions): a retry after the expiry passed must still get its first answer.
        """
        if moment is not None and moment > datetime.now(UTC) + MAX_EXPIRY_AHEAD:
            self.add(field, f"must be at most {MAX_EXPIRY_AHEAD.days} days ahead")
        return moment


def _shows(ch: str) -> bool:
    category = unicodedata.category(ch)
    if category == "Cn":  # unassigned in this Python's Unicode (14.0 on 3.11): newer emoji, scripts...
        code = ord(ch)
        # ...but not the noncharacters, kept unassigned for good: U+FDD0-FDEF, U+xFFFE, U+xFFFF.
        return not (0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE)
    return category[0] in "LNPS" and ch not in _BLANK_GLYPHS


def ascii_digits(text: str) -> bool:
    """Whether `text` is a number in ASCII digits (str.isdigit() and int() also take other scripts')."""
    return text.isascii() and text.isdigit()


def parse_uuid(raw: str, field: str) -> str:
    """The canonical form of a UUID string, or InvalidArgumentError naming the field."""
    fields = Fields()
    value = fields.uuid(field, raw)
    fields.done()
    return value
