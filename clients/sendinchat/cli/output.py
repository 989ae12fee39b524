"""What the CLI shows: usernames for ids, local times, and errors a person can act on."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from sendinchat.client import Client
from sendinchat.errors import (
    InsufficientFundsError,
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    SendInChatError,
    UnauthenticatedError,
    UnavailableError,
)

LOGIN_HINT = "log in with: sendinchat-cli login"
# What a terminal would act on rather than show: control characters but line breaks and tabs, the
# Unicode line separators, and the bidirectional controls that reorder the text around them.
_UNSHOWABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class CliError(Exception):
    """A mistake the user can fix; printed without a traceback, exit status 1."""


# The request fields a person set by typing, named as they typed them.
_WHAT_YOU_TYPED = {
    "to_username": "recipient",
    "to_user_id": "recipient",
    "from_user_id": "payer",
    "amount_minor": "amount",
    "page_size": "--limit",
}


def shown(text: str) -> str:
    """Another user's text, safe to print: what a terminal would act on is written out as an escape."""
    return _UNSHOWABLE.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def local(stamp: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp in the local time zone."""
    return stamp.ToDatetime(tzinfo=UTC).astimezone()


def when(stamp: timestamp_pb2.Timestamp, *, now: datetime | None = None) -> str:
    """A short local time: '14:03' today, 'Mon 14:03' this week, '2026-04-30 14:03' before."""
    moment = local(stamp)
    today = (now or datetime.now().astimezone()).date()
    if moment.date() == today:
        return moment.strftime("%H:%M")
    if today - moment.date() < timedelta(days=7):
        return moment.strftime("%a %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def date_time(stamp: timestamp_pb2.Timestamp) -> str:
    """A full local time with its zone: '2026-04-30 14:03 CEST'."""
    return local(stamp).strftime("%Y-%m-%d %H:%M %Z").strip()


def explain(error: SendInChatError) -> str:
    """The server's refusal in words, with what to do about it."""
    if isinstance(error, InsufficientFundsError):
        return "insufficient funds (see: sendinchat-cli balance)"
    if isinstance(error, UnauthenticatedError):
        if error.reason == "SESSION_ENDED":
            return f"your session has ended; {LOGIN_HINT}"
        if error.message in ("not logged in", "logged out"):
            return f"not logged in; {LOGIN_HINT}"
        return f"{error.message}; {LOGIN_HINT}"
    if isinstance(error, InvalidArgumentError) and error.field_violations:
        violations = error.field_violations.items()
        return "; ".join(f"{_WHAT_YOU_TYPED.get(field, field)}: {problem}" for field, problem in violations)
    if isinstance(error, RateLimitedError) and error.retry_after_seconds:
        return f"{error.message}; try again in {error.retry_after_seconds:.0f} s"
    if isinstance(error, UnavailableError):
        return f"the server is unavailable ({error.message}); try again"
    if isinstance(error, NotFoundError):
        return error.message
    return f"{error.message} ({error.code.name})"


class Names:
    """Usernames for user ids, asked of the server once each."""

    def __init__(self, client: Client, known: dict[str, str] | None = None) -> None:
        self._client = client
        self._names: dict[str, str] = dict(known or {})

    def learn(self, user_id: str, username: str) -> None:
        """Remember a name already at hand (a room's members)."""
        self._names[user_id] = username

    async def of(self, user_id: str) -> str:
        """The user's name; a short id if the user is gone."""
        if user_id not in self._names:
            try:
                self._names[user_id] = (await self._client.get_user(user_id=user_id)).username
            except NotFoundError:
                self._names[user_id] = user_id[:8]
        return self._names[user_id]
