"""Chat rooms and messages: membership, the per-room log, read marks, live-stream signals.

A room the caller is not a member of does not exist for the caller (NotFoundError). Sequences
are assigned by chat_append() (migration 0003) under the room's row lock, so they are gap-free
and in commit order; every change is announced with pg_notify in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TypeAlias

import asyncpg

from server.chat import validation as check
from server.chat.models import (
    MESSAGE_COLUMNS,
    Member,
    MemberRole,
    Message,
    MessagePage,
    Room,
    RoomKind,
    RoomPage,
)
from server.db.pool import Connection
from server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from server.ledger.models import Transfer

_ROOM_SELECT = f"""
SELECT r.id::text AS room_key, r.kind AS room_kind, r.name AS room_name, r.created_at AS room_created_at,
       r.last_sequence AS room_last_sequence, r.last_activity_at AS room_activity,
       me.last_read_sequence AS my_last_read, {MESSAGE_COLUMNS}
FROM rooms r
JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
LEFT JOIN messages m ON m.room_id = r.id AND m.sequence = r.last_sequence
LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
"""
_ROOM_BY_ID = _ROOM_SELECT + "WHERE r.id = $2"
_ROOMS_PAGE = (
    _ROOM_SELECT
    + """WHERE ($2::timestamptz IS NULL OR (r.last_activity_at, r.id) < ($2, $3::uuid))
ORDER BY r.last_activity_at DESC, r.id DESC
LIMIT $4"""
)
_MEMBERS = """
SELECT rm.room_id::text AS room_id, rm.user_id::text AS user_id, u.username, rm.role,
       rm.last_read_sequence, rm.joined_at
FROM room_members rm JOIN users u ON u.id = rm.user_id
WHERE rm.room_id = ANY($1::uuid[])
ORDER BY rm.joined_at, u.username
"""
_INSERT_GROUP = """
WITH r AS (INSERT INTO rooms (kind, name) VALUES ('group', $1) RETURNING id)
INSERT INTO room_members (room_id, user_id, role)
SELECT r.id, u.id, CASE WHEN u.id = $2 THEN 'owner' ELSE 'member' END
FROM r, unnest($3::uuid[]) WITH ORDINALITY AS u(id, n)
ORDER BY u.n
RETURNING room_id::text
"""
_INSERT_DIRECT = """
INSERT INTO rooms (kind, direct_key) VALUES ('direct', $1)
ON CONFLICT (direct_key) DO NOTHING
RETURNING id::text
"""
_DIRECT_BY_KEY = "SELECT id::text FROM rooms WHERE direct_key = $1"
_INSERT_MEMBERS = """
INSERT INTO room_members (room_id, user_id, role)
SELECT $1, u.id, 'member' FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, n)
ORDER BY u.n
ON CONFLICT (room_id, user_id) DO NOTHING
RETURNING user_id
"""
_MEMBERSHIP = """
SELECT r.kind, r.last_sequence, me.role
FROM rooms r JOIN room_members me ON me.room_id = r.id AND me.user_id = $2
WHERE r.id = $1
"""
_MEMBERSHIP_FOR_UPDATE = _MEMBERSHIP + "FOR UPDATE OF r"
_SYSTEM_MESSAGES = """
SELECT chat_append($1, NULL, NULL, 'system', u.username || $3)
FROM unnest($2::uuid[]) WITH ORDINALITY AS x(id, n) JOIN users u ON u.id = x.id
ORDER BY x.n
"""
_DELETE_MEMBER = """
WITH gone AS (DELETE FROM room_members WHERE room_id = $1 AND user_id = $2 RETURNING role)
SELECT role, pg_notify('chat_events', 'x|' || $1::text || '|' || $2::text) FROM gone
"""
_PROMOTE_OLDEST = """
UPDATE room_members SET role = 'owner'
WHERE (room_id, user_id) = (
    SELECT room_id, user_id FROM room_members WHERE room_id = $1 ORDER BY joined_at, user_id LIMIT 1
)
"""
_SEND = f"""
SELECT {MESSAGE_COLUMNS}
FROM chat_send_message($1, $2, $3, $4) AS m
LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
"""
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
       (SELECT pg_notify('chat_events', 'r|' || $1::text || '|' || $2::text || '|' || last_read_sequence)
        FROM mark) AS notified
"""
_TYPING = """
SELECT pg_notify('chat_events', 't|' || room_id || '|' || user_id)
FROM room_members WHERE room_id = $1 AND user_id = $2
"""
_PRESENCE = """
SELECT pg_notify('chat_events', 'p|' || room || '|' || $2::text || '|' || $3::text)
FROM unnest($1::text[]) AS room
"""
_TRANSFERS = """
SELECT t.id, t.request_id, t.kind, t.state, t.from_user_id, t.to_user_id, t.from_account_id, t.to_account_id,
       t.currency, t.amount, t.posted_amount, t.memo, t.created_at, t.expires_at, t.resolved_at
FROM transfers t WHERE t.id = ANY($1::uuid[])
"""
_NOT_FOUND = "room not found"

# A connection, or the pool for calls of one statement (each then borrows a connection briefly).
Db: TypeAlias = "Connection | asyncpg.Pool"


async def create_room(
    pool: asyncpg.Pool, *, user_id: str, kind: RoomKind | None, name: str, member_ids: list[str]
) -> tuple[Room, bool]:
    """Create a group, or find or create the direct room of the caller and one other user.

    Returns the room and whether it was created.

    Raises:
        InvalidArgumentError: bad kind, name or member list.
        NotFoundError: a member does not exist.
    """
    if kind is None:
        raise InvalidArgumentError.field("kind", "must be DIRECT or GROUP")
    others = [m for m in check.user_ids(member_ids, "member_user_ids") if m != user_id]
    async with pool.acquire() as conn, conn.transaction():
        if kind is RoomKind.GROUP:
            rows = await _insert_members(
                conn, _INSERT_GROUP, check.room_name(name), user_id, [user_id, *others]
            )
            room_id, created = str(rows[0]["room_id"]), True
        else:
            if name:
                raise InvalidArgumentError.field("name", "must be empty for a direct room")
            if len(member_ids) != 1 or not others:
                raise InvalidArgumentError.field(
                    "member_user_ids", "a direct room needs exactly one other user"
                )
            room_id, created = await _direct_room(conn, user_id, others[0])
        return await _load_room(conn, user_id, room_id), created


async def _direct_room(conn: Connection, user_id: str, other_id: str) -> tuple[str, bool]:
    key = ":".join(sorted((user_id, other_id)))
    room_id: str | None = await conn.fetchval(_INSERT_DIRECT, key)
    if room_id is None:  # exists, or a concurrent call just created it (ON CONFLICT waited for it)
        existing: str = await conn.fetchval(_DIRECT_BY_KEY, key)
        return existing, False
    await _insert_members(conn, _INSERT_MEMBERS, room_id, [user_id, other_id])
    return room_id, True


async def _insert_members(conn: Connection, sql: str, *args: object) -> list[asyncpg.Record]:
    try:
        return await conn.fetch(sql, *args)
    except asyncpg.ForeignKeyViolationError as exc:
        if exc.constraint_name == "room_members_user_id_fkey":
            raise NotFoundError("user not found") from None
        raise


async def get_room(conn: Db, *, user_id: str, room_id: str) -> Room:
    """A room the caller is a member of, with members, last message and unread count.

    Raises:
        InvalidArgumentError: room_id is not a UUID.
        NotFoundError: no such room, or the caller is not a member.
    """
    return await _load_room(conn, user_id, check.parse_uuid(room_id, "room_id"))


async def _load_room(conn: Db, user_id: str, room_id: str) -> Room:
    row = await conn.fetchrow(_ROOM_BY_ID, user_id, room_id)
    if row is None:
        raise NotFoundError(_NOT_FOUND)
    return (await _rooms_with_members(conn, [row]))[0]


async def _rooms_with_members(conn: Db, rows: list[asyncpg.Record]) -> list[Room]:
    members: dict[str, list[Member]] = {str(r["room_key"]): [] for r in rows}
    for m in await conn.fetch(_MEMBERS, list(members)):
        members[m["room_id"]].append(
            Member(
                user_id=m["user_id"],
                username=m["username"],
                role=MemberRole(m["role"]),
                last_read_sequence=m["last_read_sequence"],
                joined_at=m["joined_at"],
            )
        )
    last_messages = await attach_transfers(
        conn, [Message.from_record(r) for r in rows if r["sequence"] is not None]
    )
    last = {m.room_id: m for m in last_messages}
    return [
        Room(
            id=r["room_key"],
            kind=RoomKind(r["room_kind"]),
            name=r["room_name"],
            created_at=r["room_created_at"],
            last_sequence=r["room_last_sequence"],
            members=tuple(members[r["room_key"]]),
            last_message=last.get(r["room_key"]),
            unread_count=max(0, r["room_last_sequence"] - r["my_last_read"]),
        )
        for r in rows
    ]


async def list_rooms(conn: Db, *, user_id: str, page_size: int, page_token: str) -> RoomPage:
    """The caller's rooms, most recently active first.

    Raises:
        InvalidArgumentError: bad page size or token.
    """
    size = check.page_size(page_size)
    after_time: datetime | None = None
    after_id: str | None = None
    if page_token:
        payload = check.decode_token(page_token)
        try:
            after_time = datetime.fromisoformat(str(payload["t"]))
            after_id = check.parse_uuid(str(payload["i"]), "page_token")
        except (KeyError, ValueError):
            raise InvalidArgumentError.field("page_token", "malformed") from None
    rows = await conn.fetch(_ROOMS_PAGE, user_id, after_time, after_id, size + 1)
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = check.encode_token({"t": rows[-1]["room_activity"].isoformat(), "i": rows[-1]["room_key"]})
    return RoomPage(tuple(await _rooms_with_members(conn, rows)), token)


async def add_members(pool: asyncpg.Pool, *, user_id: str, room_id: str, member_ids: list[str]) -> Room:
    """Add users to a group (any member may); a SYSTEM message records each one who joined.

    Raises:
        InvalidArgumentError: direct room, empty or malformed list.
        NotFoundError: the room (for the caller) or a user.
    """
    room_id = check.parse_uuid(room_id, "room_id")
    ids = check.user_ids(member_ids, "user_ids")
    if not ids:
        raise InvalidArgumentError.field("user_ids", "at least one user")
    async with pool.acquire() as conn, conn.transaction():
        membership = await _membership(conn, room_id, user_id, for_update=True)
        if membership["kind"] != RoomKind.GROUP:
            raise InvalidArgumentError.field("room_id", "members cannot be added to a direct room")
        rows = await _insert_members(conn, _INSERT_MEMBERS, room_id, ids)
        added = [str(r["user_id"]) for r in rows]
        if added:
            await conn.execute(_SYSTEM_MESSAGES, room_id, added, " joined")
        return await _load_room(conn, user_id, room_id)


async def remove_member(pool: asyncpg.Pool, *, user_id: str, room_id: str, member_id: str) -> Room:
    """Remove a member from a group (owner only); their live streams lose the room at once.

    Raises:
        InvalidArgumentError: malformed ids or a direct room.
        NotFoundError: the room (for the caller), or the user is not a member.
        PermissionDeniedError: the caller is not the owner.
        FailedPreconditionError: removing the owner (reason CANNOT_REMOVE_OWNER).
    """
    room_id = check.parse_uuid(room_id, "room_id")
    member_id = check.parse_uuid(member_id, "user_id")
    async with pool.acquire() as conn, conn.transaction():
        membership = await _membership(conn, room_id, user_id, for_update=True)
        if membership["kind"] != RoomKind.GROUP:
            raise InvalidArgumentError.field("room_id", "members cannot be removed from a direct room")
        if membership["role"] != MemberRole.OWNER:
            raise PermissionDeniedError("only the room's owner may remove members")
        if member_id == user_id:
            raise FailedPreconditionError(
                "the owner cannot be removed; leave instead", reason="CANNOT_REMOVE_OWNER"
            )
        if await conn.fetchrow(_DELETE_MEMBER, room_id, member_id) is None:
            raise NotFoundError("the user is not a member of the room")
        await conn.execute(_SYSTEM_MESSAGES, room_id, [member_id], " was removed")
        return await _load_room(conn, user_id, room_id)


async def leave_room(pool: asyncpg.Pool, *, user_id: str, room_id: str) -> None:
    """Take the caller out of a group; an owner who leaves hands the room to the oldest member.

    Raises:
        InvalidArgumentError: malformed id or a direct room.
        NotFoundError: the room (for the caller).
    """
    room_id = check.parse_uuid(room_id, "room_id")
    async with pool.acquire() as conn, conn.transaction():
        membership = await _membership(conn, room_id, user_id, for_update=True)
        if membership["kind"] != RoomKind.GROUP:
            raise InvalidArgumentError.field("room_id", "a direct room cannot be left")
        await conn.execute(_SYSTEM_MESSAGES, room_id, [user_id], " left")
        await conn.fetchrow(_DELETE_MEMBER, room_id, user_id)
        if membership["role"] == MemberRole.OWNER:
            await conn.execute(_PROMOTE_OLDEST, room_id)


async def _membership(conn: Db, room_id: str, user_id: str, *, for_update: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(_MEMBERSHIP_FOR_UPDATE if for_update else _MEMBERSHIP, room_id, user_id)
    if row is None:
        raise NotFoundError(_NOT_FOUND)
    return row


async def room_position(conn: Db, *, user_id: str, room_id: str) -> int:
    """The room's newest sequence, after checking the caller is a member.

    Raises:
        InvalidArgumentError: room_id is not a UUID.
        NotFoundError: no such room, or the caller is not a member.
    """
    row = await _membership(conn, check.parse_uuid(room_id, "room_id"), user_id)
    return int(row["last_sequence"])


async def send_message(
    conn: Db, *, user_id: str, room_id: str, client_message_id: str, text: str, stream: bool = False
) -> Message:
    """Append a text message; a retry with the same client_message_id returns the first one.

    `stream` makes client_message_id required (the stream's acks are keyed by it).

    Raises:
        InvalidArgumentError: text not 1-4000 characters, malformed ids.
        NotFoundError: no such room, or the caller is not a member.
    """
    violations: dict[str, str] = {}
    checks: tuple[Callable[[], object], ...] = (
        lambda: check.parse_uuid(room_id, "room_id"),
        lambda: check.check_text(text),
        lambda: check.check_client_message_id(client_message_id, required=stream),
    )
    for run in checks:
        try:
            run()
        except InvalidArgumentError as exc:
            violations.update(exc.violations)
    if violations:
        raise InvalidArgumentError(violations)
    client_id = client_message_id or None
    try:
        row = await conn.fetchrow(_SEND, check.parse_uuid(room_id, "room_id"), user_id, client_id, text)
    except asyncpg.exceptions.NoDataFoundError:  # raised by chat_send_message: not a member
        raise NotFoundError(_NOT_FOUND) from None
    assert row is not None
    return Message.from_record(row)


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
    room_id = check.parse_uuid(room_id, "room_id")
    size = check.page_size(page_size)
    if before_sequence < 0 or after_sequence < 0:
        field = "before_sequence" if before_sequence < 0 else "after_sequence"
        raise InvalidArgumentError.field(field, "must not be negative")
    if before_sequence and after_sequence:
        raise InvalidArgumentError.field(
            "before_sequence", "set at most one of before_sequence and after_sequence"
        )
    forward, bound = after_sequence > 0, after_sequence or before_sequence
    if page_token:
        payload = check.decode_token(page_token)
        if payload.get("r") != room_id or not isinstance(payload.get("s"), int):
            raise InvalidArgumentError.field("page_token", "does not belong to this room")
        forward, bound = bool(payload.get("f")), int(payload["s"])
    last = int((await _membership(conn, room_id, user_id))["last_sequence"])
    if forward:
        rows = await conn.fetch(_MESSAGES_AFTER, room_id, bound, last, size + 1)
    else:
        rows = await conn.fetch(_MESSAGES_BEFORE, room_id, bound or last + 1, size + 1)
    messages = await attach_transfers(conn, [Message.from_record(r) for r in rows[:size]])
    token = ""
    if len(rows) > size:
        token = check.encode_token({"r": room_id, "f": forward, "s": messages[-1].sequence})
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


async def mark_read(conn: Db, *, user_id: str, room_id: str, sequence: int) -> int:
    """Move the caller's read mark up to `sequence` (never back, never past the newest); return it.

    Raises:
        InvalidArgumentError: malformed id or negative sequence.
        NotFoundError: no such room, or the caller is not a member.
    """
    room_id = check.parse_uuid(room_id, "room_id")
    if sequence < 0:
        raise InvalidArgumentError.field("sequence", "must not be negative")
    row = await conn.fetchrow(_MARK_READ, room_id, user_id, sequence)
    if row is None or row["current"] is None:
        raise NotFoundError(_NOT_FOUND)
    return int(row["current"])


async def announce_typing(conn: Db, *, user_id: str, room_id: str) -> None:
    """Tell the room's live streams the caller is typing (nothing is stored).

    Raises:
        InvalidArgumentError: room_id is not a UUID.
        NotFoundError: no such room, or the caller is not a member.
    """
    room_id = check.parse_uuid(room_id, "room_id")
    if await conn.fetchrow(_TYPING, room_id, user_id) is None:
        raise NotFoundError(_NOT_FOUND)


async def announce_presence(conn: Db, *, user_id: str, room_ids: list[str], online: bool) -> None:
    """Tell the live streams of these rooms that the user came online or went offline."""
    if room_ids:
        await conn.execute(_PRESENCE, room_ids, user_id, "1" if online else "0")
