"""A room's message log: sending, paging, read marks and typing.

Sequences are assigned by chat_append() (server/db/functions/chat_log.sql) under the room's row
lock, so they are gap-free and in commit order; every change is announced to the live streams
(server/chat/events.py) on the chat bus once it has committed (server/chat/bus.py: on the default
bus the transaction's own NOTIFY does it). Call these with the pool, so that each statement is its
own transaction and the publish follows its commit. Rooms the caller is not a member of do not
exist for the caller (NotFoundError).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeAlias

import asyncpg

from server import pagetokens
from server.chat import events
from server.chat import validation as rules
from server.chat.bus import Publisher
from server.chat.models import MESSAGE_COLUMNS, Message, MessagePage
from server.chat.sending import MessageOrder, MessageSender
from server.db.pool import Connection
from server.errors import NotFoundError
from server.ledger.models import TRANSFER_COLUMNS, Transfer
from server.validation import INT64_MAX, Fields, parse_uuid

_MEMBERSHIP = """
SELECT r.kind, r.last_sequence, me.role
FROM rooms r JOIN room_members me ON me.room_id = r.id AND me.user_id = $2
WHERE r.id = $1
"""
# The member row is locked too, so that a wait for the room's lock re-reads it (as
# chat_lock_room_of_member does): a member removed or changed meanwhile is seen as they are now.
_MEMBERSHIP_FOR_UPDATE = _MEMBERSHIP + "FOR UPDATE OF r FOR KEY SHARE OF me"
_MESSAGES_FROM = f"""
SELECT {MESSAGE_COLUMNS}
FROM messages m LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
WHERE m.room_id = $1
"""
_MESSAGES_AFTER = _MESSAGES_FROM + "AND m.sequence > $2 AND m.sequence <= $3 ORDER BY m.sequence LIMIT $4"
_MESSAGES_BEFORE = _MESSAGES_FROM + "AND m.sequence < $2 ORDER BY m.sequence DESC LIMIT $3"
_MARK_READ = """
WITH mark AS (
    UPDATE room_members me SET last_read_sequence = LEAST($3, r.last_sequence)
    FROM rooms r
    WHERE me.room_id = $1 AND me.user_id = $2 AND r.id = me.room_id
      AND me.last_read_sequence < LEAST($3, r.last_sequence)
    RETURNING me.last_read_sequence
)
SELECT COALESCE(
           (SELECT last_read_sequence FROM mark),
           (SELECT last_read_sequence FROM room_members WHERE room_id = $1 AND user_id = $2)
       ) AS current,
       (SELECT last_read_sequence FROM mark) AS moved,
       (SELECT chat_notify_read($1, $2, last_read_sequence) FROM mark) AS notified
"""
_TYPING = """
SELECT chat_notify_typing(room_id, user_id) FROM room_members WHERE room_id = $1 AND user_id = $2
"""
_POSITIONS = "SELECT id::text, last_sequence FROM rooms WHERE id = ANY($1::uuid[])"
_NOT_MEMBERS = """
SELECT DISTINCT x.room_id::text, x.user_id::text
FROM unnest($1::uuid[], $2::uuid[]) AS x(room_id, user_id)
WHERE NOT EXISTS (SELECT 1 FROM room_members me WHERE me.room_id = x.room_id AND me.user_id = x.user_id)
"""
_TRANSFERS = f"SELECT {TRANSFER_COLUMNS} FROM transfers t WHERE t.id = ANY($1::uuid[])"
NOT_FOUND = "room not found"

# A connection, or the pool for calls of one statement (each then borrows a connection briefly).
Db: TypeAlias = "Connection | asyncpg.Pool"


async def membership(conn: Db, room_id: str, user_id: str, *, for_update: bool = False) -> asyncpg.Record:
    """The caller's membership row (room kind, last sequence, role), or NotFoundError."""
    row = await conn.fetchrow(_MEMBERSHIP_FOR_UPDATE if for_update else _MEMBERSHIP, room_id, user_id)
    if row is None:
        raise NotFoundError(NOT_FOUND)
    return row


async def room_position(conn: Db, *, user_id: str, room_id: str) -> int:
    """The room's newest sequence, after checking the caller is a member.

    Raises:
        InvalidArgumentError: room_id is not a UUID.
        NotFoundError: no such room, or the caller is not a member.
    """
    row = await membership(conn, parse_uuid(room_id, "room_id"), user_id)
    return int(row["last_sequence"])


async def room_positions(conn: Db, room_ids: list[str]) -> dict[str, int]:
    """The newest sequence of each room that exists (for the hub, which checked membership)."""
    return {str(r[0]): int(r[1]) for r in await conn.fetch(_POSITIONS, room_ids)}


async def not_members(conn: Db, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (room, user) pairs whose user is not a member of the room now (ids checked by the caller)."""
    if not pairs:
        return set()
    rows = await conn.fetch(_NOT_MEMBERS, [r for r, _ in pairs], [u for _, u in pairs])
    return {(str(r[0]), str(r[1])) for r in rows}


async def send_message(
    sender: MessageSender,
    *,
    user_id: str,
    room_id: str,
    client_message_id: str,
    text: str,
    stream: bool = False,
) -> Message:
    """Append a text message; a retry with the same client_message_id returns the first one.

    `stream` makes client_message_id required (the stream's acks are keyed by it).

    Raises:
        InvalidArgumentError: text not 1-4000 characters, malformed ids.
        NotFoundError: no such room, or the caller is not a member.
    """
    fields = Fields()
    room = fields.uuid("room_id", room_id)
    rules.message_text(fields, text)
    client_id = rules.client_message_id(fields, client_message_id, required=stream)
    fields.done()
    message = await sender.send(MessageOrder(room, user_id, client_id, text))
    if message is None:
        raise NotFoundError(NOT_FOUND)
    return message


async def list_messages(
    conn: Db,
    *,
    user_id: str,
    room_id: str,
    page_size: int,
    page_token: str,
    before_sequence: int,
    after_sequence: int,
) -> MessagePage:
    """A page of a room's history: after a sequence oldest first, else newest first.

    Raises:
        InvalidArgumentError: page size over 100, both bounds, negative bound, bad token.
        NotFoundError: no such room, or the caller is not a member.
    """
    fields = Fields()
    room_id = fields.uuid("room_id", room_id)
    size = fields.page_size(page_size)
    fields.integer("before_sequence", before_sequence, 0, INT64_MAX)
    fields.integer("after_sequence", after_sequence, 0, INT64_MAX)
    if before_sequence and after_sequence:
        fields.add("before_sequence", "set at most one of before_sequence and after_sequence")
    forward, bound = after_sequence > 0, after_sequence or before_sequence
    if page_token:
        token_room, forward, bound = fields.check(
            lambda: pagetokens.MESSAGES.decode(page_token), (room_id, False, 0)
        )
        if token_room != room_id:
            fields.add("page_token", "does not belong to this room")
    fields.done()
    last = int((await membership(conn, room_id, user_id))["last_sequence"])
    if forward:
        rows = await conn.fetch(_MESSAGES_AFTER, room_id, bound, last, size + 1)
    else:
        rows = await conn.fetch(_MESSAGES_BEFORE, room_id, bound or last + 1, size + 1)
    messages = await attach_transfers(conn, [Message.from_record(r) for r in rows[:size]])
    token = ""
    if len(rows) > size:
        token = pagetokens.MESSAGES.encode(room_id, forward, messages[-1].sequence)
    return MessagePage(tuple(messages), token)


async def messages_after(conn: Db, *, room_id: str, after: int, upto: int, limit: int) -> list[Message]:
    """Messages with after < sequence <= upto, oldest first; for callers that checked membership."""
    rows = await conn.fetch(_MESSAGES_AFTER, room_id, after, upto, limit)
    return await attach_transfers(conn, [Message.from_record(r) for r in rows])


async def transfers_by_id(conn: Db, transfer_ids: list[str]) -> dict[str, Transfer]:
    """Ledger transfers by id (for the messages that show them; the room's members may see them)."""
    if not transfer_ids:
        return {}
    return {str(r["id"]): Transfer.from_record(r) for r in await conn.fetch(_TRANSFERS, transfer_ids)}


async def attach_transfers(conn: Db, messages: list[Message]) -> list[Message]:
    """The messages with the ledger transfer of each PAYMENT message filled in (one query, if any)."""
    wanted = [m.transfer_id for m in messages if m.transfer_id is not None and m.transfer is None]
    if not wanted:
        return messages
    transfers = await transfers_by_id(conn, wanted)
    return [
        replace(m, transfer=transfers.get(m.transfer_id)) if m.transfer_id is not None else m
        for m in messages
    ]


async def mark_read(conn: Db, *, user_id: str, room_id: str, sequence: int, bus: Publisher) -> int:
    """Move the caller's read mark up to `sequence` (never back, never past the newest); return it.

    Raises:
        InvalidArgumentError: malformed id or negative sequence.
        NotFoundError: no such room, or the caller is not a member.
    """
    fields = Fields()
    room_id = fields.uuid("room_id", room_id)
    fields.integer("sequence", sequence, 0, INT64_MAX)
    fields.done()
    row = await conn.fetchrow(_MARK_READ, room_id, user_id, sequence)
    if row is None or row["current"] is None:
        raise NotFoundError(NOT_FOUND)
    if row["moved"] is not None:
        await bus.publish(events.ReadMarked(room_id, user_id, int(row["moved"])))
    return int(row["current"])


async def announce_typing(conn: Db, *, user_id: str, room_id: str, bus: Publisher) -> None:
    """Tell the room's live streams the caller is typing (nothing is stored).

    Raises:
        InvalidArgumentError: room_id is not a UUID.
        NotFoundError: no such room, or the caller is not a member.
    """
    room_id = parse_uuid(room_id, "room_id")
    if await conn.fetchrow(_TYPING, room_id, user_id) is None:
        raise NotFoundError(NOT_FOUND)
    await bus.publish(events.Typing(room_id, user_id))
