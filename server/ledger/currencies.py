"""The ISO-4217 currencies the ledger holds, with their minor-unit exponents."""

from __future__ import annotations

from server.errors import InvalidArgumentError

# Keep in step with the currencies table (migration 0002; a test compares them).
EXPONENTS: dict[str, int] = {
    "AUD": 2,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "EUR": 2,
    "GBP": 2,
    "GHS": 2,
    "INR": 2,
    "JPY": 0,
    "KES": 2,
    "KRW": 0,
    "MXN": 2,
    "NGN": 2,
    "USD": 2,
    "XOF": 0,
    "ZAR": 2,
}


def check_currency(code: str, field: str = "currency") -> str:
    """`code` if the ledger supports it, else InvalidArgumentError naming `field`."""
    if code not in EXPONENTS:
        raise InvalidArgumentError.field(field, "must be a supported ISO-4217 code such as USD, EUR or JPY")
    return code


def exponent(code: str) -> int:
    """Digits after the decimal point for a supported currency."""
    return EXPONENTS[code]
