"""The fields every money-moving request has, checked one way for the ledger and for chat payments."""

from __future__ import annotations

from dataclasses import dataclass

from server.ledger.currencies import EXPONENTS
from server.users.validation import normalize_username
from server.validation import Fields, Text

MEMO = Text(max_chars=256, visible=True)  # optional; when given, it shows something
MAX_AMOUNT = 10**15  # far beyond any real payment, far from int64 overflow of summed balances
_CURRENCY_RULE = "must be a supported ISO-4217 code such as USD, EUR or JPY (see ListCurrencies)"


@dataclass(frozen=True, slots=True)
class Money:
    """What a money-moving request says: its id, the other party, how much, and a memo.

    The other party is named by id or by username (the request's oneof), never both. Once checked
    (see `money`), the id is canonical, the username normalized and the currency one the ledger holds.
    """

    request_id: str
    user_id: str | None
    username: str | None
    currency: str
    amount: int
    memo: str = ""


def currency(fields: Fields, raw: str, field: str = "currency") -> str:
    """A currency the ledger holds."""
    return fields.member(field, raw, EXPONENTS, _CURRENCY_RULE)


def amount(fields: Fields, value: int, *, allow_zero: bool = False, field: str = "amount_minor") -> int:
    """An amount in minor units: 1 (or 0 when allowed) up to MAX_AMOUNT."""
    return fields.integer(field, value, 0 if allow_zero else 1, MAX_AMOUNT)


def money(fields: Fields, request: Money, *, party_prefix: str) -> Money:
    """The request with every field checked (the party's fields are named `<party_prefix>_user_id`, ...)."""
    user_id, username = party(fields, request.user_id, request.username, party_prefix)
    return Money(
        request_id=fields.uuid("request_id", request.request_id),
        user_id=user_id,
        username=username,
        currency=currency(fields, request.currency),
        amount=amount(fields, request.amount),
        memo=fields.text("memo", request.memo, MEMO),
    )


def party(
    fields: Fields, user_id: str | None, username: str | None, prefix: str
) -> tuple[str | None, str | None]:
    """Who pays or receives, by id or by username (the request's oneof): (id, None) or (None, name)."""
    if user_id is not None:
        return fields.uuid(f"{prefix}_user_id", user_id) or None, None
    if username is not None:
        return None, fields.check(lambda: normalize_username(username, f"{prefix}_username"), None)
    fields.add(f"{prefix}_user_id", f"set {prefix}_user_id or {prefix}_username")
    return None, None
