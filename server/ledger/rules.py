"""The fields every money-moving request has, checked one way for the ledger and for chat payments."""

from __future__ import annotations

from server.ledger.currencies import EXPONENTS
from server.users.validation import normalize_username
from server.validation import Fields, Text

MEMO = Text(max_chars=256)
MAX_AMOUNT = 10**15  # far beyond any real payment, far from int64 overflow of summed balances
_CURRENCY_RULE = "must be a supported ISO-4217 code such as USD, EUR or JPY (see ListCurrencies)"


def currency(fields: Fields, raw: str, field: str = "currency") -> str:
    """A currency the ledger holds."""
    return fields.member(field, raw, EXPONENTS, _CURRENCY_RULE)


def amount(fields: Fields, value: int, *, allow_zero: bool = False, field: str = "amount_minor") -> int:
    """An amount in minor units: 1 (or 0 when allowed) up to MAX_AMOUNT."""
    return fields.integer(field, value, 0 if allow_zero else 1, MAX_AMOUNT)


def money(
    fields: Fields, *, request_id: str, currency_code: str, amount_minor: int, memo: str
) -> tuple[str, str]:
    """The request_id (canonical), currency, amount and memo of a money request; (request_id, currency)."""
    rid = fields.uuid("request_id", request_id)
    code = currency(fields, currency_code)
    amount(fields, amount_minor)
    fields.text("memo", memo, MEMO)
    return rid, code


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
