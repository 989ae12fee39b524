"""Amounts as people write them (`2.50 USD`), converted with each currency's exponent from the server."""

from __future__ import annotations

import re
from decimal import Decimal

from sendinchat.cli.output import CliError
from sendinchat.client import Client

# ASCII digits only ('²'.isdigit() is True); commas only between groups of three, as format()
# writes them: '1,000.50' is one thousand, and '0,05' is refused rather than read as 5.
_AMOUNT = re.compile(r"(?:[0-9]+|[0-9]{1,3}(?:,[0-9]{3})+)(?:\.[0-9]+)?|\.[0-9]+")


# The most one request may move, in minor units (the server refuses more, and int64 ends soon after).
MAX_AMOUNT_MINOR = 10**15


class Currencies:
    """The server's currencies and their minor-unit exponents (LedgerService.ListCurrencies)."""

    def __init__(self, exponents: dict[str, int]) -> None:
        self.exponents = exponents

    @classmethod
    async def fetch(cls, client: Client) -> Currencies:
        """Ask the server once."""
        return cls({c.code: c.minor_unit_exponent for c in await client.list_currencies()})

    def code(self, currency: str) -> str:
        """The upper-case code, if the server holds it."""
        code = currency.upper()
        if code not in self.exponents:
            raise CliError(
                f"unknown currency {currency!r}; the server holds {', '.join(sorted(self.exponents))}"
            )
        return code

    def format(self, amount_minor: int, currency: str, *, signed: bool = False) -> str:
        """Minor units in major units: 250 USD is '2.50 USD', 1000 JPY is '1,000 JPY'."""
        exponent = self.exponents.get(currency, 0)
        value = Decimal(amount_minor).scaleb(-exponent)
        sign = "+" if signed and amount_minor > 0 else ""
        return f"{sign}{value:,.{exponent}f} {currency}"

    def parse(self, amount: str, currency: str) -> tuple[int, str]:
        """A positive major-unit amount ('2.50', '1,000') in minor units, and the currency's code."""
        code = self.code(currency)
        exponent = self.exponents[code]
        if not _AMOUNT.fullmatch(amount):
            raise CliError(f"not an amount: {amount!r} (write it like 2.50, with a dot for the decimals)")
        _, _, decimals = amount.partition(".")
        if len(decimals) > exponent:  # also '1.000 JPY', which may mean a thousand
            places = "no decimal places" if exponent == 0 else f"at most {exponent} decimal places"
            raise CliError(f"{code} amounts have {places}: {amount}")
        value = int(Decimal(amount.replace(",", "")).scaleb(exponent))
        if value <= 0:
            raise CliError("the amount must be more than zero")
        if value > MAX_AMOUNT_MINOR:
            raise CliError(f"the amount is more than one payment may move: {amount} {code}")
        return value, code
