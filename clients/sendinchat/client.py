"""A typed async client: every RPC of the three services, token refresh, safe retries, resumable streams."""

from __future__ import annotations

from sendinchat._connection import ChatConnection
from sendinchat._ledger import LedgerMixin
from sendinchat._messages import MessagesMixin
from sendinchat._money import MoneyMixin
from sendinchat._rooms import RoomsMixin
from sendinchat._users import UsersMixin

__all__ = ["ChatConnection", "Client"]


class Client(UsersMixin, LedgerMixin, MoneyMixin, RoomsMixin, MessagesMixin):
    """One channel to a SendInChat server, with the caller's tokens.

    Every RPC is a method named after it in snake_case (CreateTransfer is create_transfer,
    GetMe is get_me); list RPCs are async iterators over every page, and WatchTransfers and
    Connect resume by themselves after a break. Failures raise the typed errors of
    sendinchat.errors. An access token that has expired is refreshed once and the call
    repeated; calls that are safe to repeat (reads, and writes carrying a request_id or
    client_message_id) are retried on ABORTED and UNAVAILABLE with backoff. The raw generated
    stubs are client.users, client.ledger and client.chat.

    Use it as `async with Client("127.0.0.1:50051") as client: await client.login(...)`.
    """

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def connect(self, *, reconnect_attempts: int = 10) -> ChatConnection:
        """The Connect stream (opened on first use), resumable from each room's last sequence.

        Args:
            reconnect_attempts: Reconnections in a row, without an event between them, before
                events() gives up.
        """
        return ChatConnection(self, reconnect_attempts=reconnect_attempts)
