"""Group commit for transfers (server/db/group_commit.py): concurrent creations share one statement.

One batch is one call of a PL/pgSQL function: one round trip, one transaction, one row per request
(by position). One batch in flight measured best (bench/README.md). Plain immediate user-to-user
transfers (the bulk of the traffic) go through the lean `ledger_transfer_batch`, which creates
every one that cannot fail in one statement; the rare rest (a retry, short funds, a recipient
without an account...) then goes through `ledger_create_transfers`, which alone decides outcomes,
in a second round trip.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.config import Config
from server.db.group_commit import GroupCommit, settle
from server.db.pool import Connection
from server.ledger.models import Transfer

_CREATE_TRANSFERS = """
SELECT * FROM ledger_create_transfers(
    $1::uuid[], $2::uuid[], $3::text[], $4::boolean[], $5::uuid[], $6::text[], $7::uuid[], $8::text[],
    $9::text[], $10::bigint[], $11::text[], $12::timestamptz[])
"""
_TRANSFER_BATCH = """
SELECT * FROM ledger_transfer_batch($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[])
"""
# The TransferOrder field behind each argument of the two functions, in order.
_CREATE_TRANSFERS_FIELDS = (
    "initiator_id",
    "request_id",
    "kind",
    "two_phase",
    "from_user_id",
    "from_username",
    "to_user_id",
    "to_username",
    "currency",
    "amount",
    "memo",
    "expires_at",
)
_TRANSFER_BATCH_FIELDS = ("initiator_id", "request_id", "to_user_id", "currency", "amount", "memo")


@dataclass(frozen=True, slots=True)
class TransferOrder:
    """One request to create a transfer, already validated. A None user is the system account."""

    initiator_id: str
    request_id: str
    kind: str
    two_phase: bool
    from_user_id: str | None
    to_user_id: str | None
    to_username: str | None
    currency: str
    amount: int
    memo: str
    expires_at: datetime | None = None
    from_username: str | None = None

    @property
    def plain(self) -> bool:
        """An immediate transfer from the initiator to a user named by id: the lean function's case."""
        return (
            self.kind == "transfer"
            and not self.two_phase
            and self.to_user_id is not None
            and self.from_user_id == self.initiator_id
        )


# The outcome word and, for CREATED and REPLAYED, the transfer.
Result = tuple[str, Transfer | None]
_Pending = tuple[TransferOrder, "asyncio.Future[Result]"]
_Answer = tuple["asyncio.Future[Result]", Result]


class TransferBatcher(GroupCommit[TransferOrder, Result]):
    """Coalesces concurrent TransferOrders into batched calls of the ledger's batch functions."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
        linger_seconds: float = Config.transfer_batch_linger_ms / 1000,
    ) -> None:
        super().__init__(
            pool, linger_seconds=linger_seconds, max_batch=max_batch, max_in_flight=max_in_flight
        )
        self.batches = 0
        self.orders = 0

    async def _alone(self, order: TransferOrder) -> Result:
        # The full function: a lone plain transfer whose lean statement failed gets its answer.
        (row,) = await self._execute(self._pool, [order])
        return _result(row)

    async def _create(self, conn: Connection, live: list[_Pending]) -> list[_Answer]:
        """Each live request's outcome, not yet given to its caller."""
        rest: list[_Pending] = []
        plain: list[_Pending] = []
        keys: set[tuple[str, str]] = set()
        for item in live:
            order = item[0]
            key = (order.initiator_id, order.request_id)
            if order.plain and key not in keys:
                keys.add(key)
                plain.append(item)
            else:
                rest.append(item)
        answers: list[_Answer] = []
        if plain:
            orders = [order for order, _ in plain]
            self.batches += 1
            self.orders += len(orders)
            rows = await conn.fetch(_TRANSFER_BATCH, *_columns(orders, _TRANSFER_BATCH_FIELDS))
            created: set[int] = set()
            for row in rows:
                created.add(row[0] - 1)
                order, future = plain[row[0] - 1]
                created_at = row[4]
                transfer = Transfer(
                    id=str(row[1]),
                    request_id=order.request_id,
                    kind="transfer",
                    state="posted",
                    from_user_id=order.from_user_id,
                    to_user_id=order.to_user_id,
                    from_account_id=str(row[2]),
                    to_account_id=str(row[3]),
                    currency=order.currency,
                    amount=order.amount,
                    posted_amount=order.amount,
                    memo=order.memo,
                    created_at=created_at,
                    expires_at=None,
                    resolved_at=created_at,
                )
                answers.append((future, ("CREATED", transfer)))
            if len(created) < len(plain):
                rest.extend(
                    item for index, item in enumerate(plain) if index not in created and not item[1].done()
                )
        if rest:
            for future, result in answers:  # the created ones need not wait for the second round trip
                settle(future, result)
            answers = []
            rows = await self._execute(conn, [order for order, _ in rest])
            by_index = {row["idx"]: row for row in rows}
            for index, (_, future) in enumerate(rest, start=1):
                answers.append((future, _result(by_index[index])))
        return answers

    async def _execute(
        self, db: Connection | asyncpg.Pool, orders: list[TransferOrder]
    ) -> list[asyncpg.Record]:
        self.batches += 1
        self.orders += len(orders)
        return await db.fetch(_CREATE_TRANSFERS, *_columns(orders, _CREATE_TRANSFERS_FIELDS))


def _columns(orders: list[TransferOrder], names: tuple[str, ...]) -> list[list[object]]:
    """The orders as one array per argument of a batch function (arrays in, one row per item out)."""
    return [[getattr(order, name) for order in orders] for name in names]


def _result(row: asyncpg.Record) -> Result:
    outcome: str = row["outcome"]
    return outcome, Transfer.from_record(row["transfer"]) if outcome in ("CREATED", "REPLAYED") else None
