"""Chat rooms: creating them and what a member sees of them (changes of membership: members.py).

A room the caller is not a member of does not exist for the caller (NotFoundError).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from server import pagetokens
from server.chat import validation as rules
from server.chat.messages import NOT_FOUND, Db, attach_transfers
from server.chat.models import (
    MESSAGE_COLUMNS,
    Member,
    Message,
    Room,
    RoomKind,
    RoomPage,
)
from server.db.pool import Connection
from server.db.records import bind
from server.errors import NotFoundError
from server.validation import Fields, parse_uuid

_ROOM_SELECT = f"""
SELECT r.id::text AS room_key, r.kind AS room_kind, r.name AS room_name, r.created_at AS room_created_at,
       r.last_sequence AS room_last_sequence, me.last_read_sequence AS my_last_read, {MESSAGE_COLUMNS}
FROM rooms r
JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
LEFT JOIN messages m ON m.room_id = r.id AND m.sequence = r.last_sequence
LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
"""
_ROOM_BY_ID = _ROOM_SELECT + "WHERE r.id = $2"
# Every page of a listing orders rooms by their activity as the first page saw it ($5, that page's
# snapshot): the creation of the newest message whose transaction is visible in the snapshot, or
# the room's own creation. A room that becomes active while the caller pages keeps its place,
# neither skipped nor repeated. (The first page needs no snapshot test: it sees what its snapshot
# sees.) The search looks back at most ROOM_ACTIVITY_LOOKBACK messages, so a crafted token cannot
# make it read a room's whole history: a room with that many since the first page takes its
# creation time, so it may come again on a later page, but is never skipped.
ROOM_ACTIVITY_LOOKBACK = 256
_ROOMS_PAGE = f"""
WITH snapshot AS (SELECT coalesce($5::text::pg_snapshot, pg_current_snapshot()) AS seen),
mine AS (
    SELECT r.id, r.kind, r.name, r.created_at, r.last_sequence, me.last_read_sequence,
           snapshot.seen::text AS snapshot,
           coalesce((SELECT old.created_at FROM messages old
                     WHERE old.room_id = r.id
                       AND old.sequence > r.last_sequence - {ROOM_ACTIVITY_LOOKBACK}
                       AND ($5 IS NULL OR old.xid IS NULL
                            OR pg_visible_in_snapshot(old.xid::text::xid8, snapshot.seen))
                     ORDER BY old.sequence DESC LIMIT 1), r.created_at) AS activity
    FROM snapshot, rooms r JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
)
SELECT r.id::text AS room_key, r.kind AS room_kind, r.name AS room_name, r.created_at AS room_created_at,
       r.last_sequence AS room_last_sequence, r.activity AS room_activity, r.snapshot,
       r.last_read_sequence AS my_last_read, {MESSAGE_COLUMNS}
FROM mine r
LEFT JOIN messages m ON m.room_id = r.id AND m.sequence = r.last_sequence
LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
WHERE $2::timestamptz IS NULL OR (r.activity, r.id) < ($2, $3::uuid)
ORDER BY r.activity DESC, r.id DESC
LIMIT $4
"""
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
INSERT_MEMBERS = """
INSERT INTO room_members (room_id, user_id, role)
SELECT $1, u.id, 'member' FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, n)
ORDER BY u.n
ON CONFLICT (room_id, user_id) DO NOTHING
RETURNING user_id
"""


async def create_room(
    pool: asyncpg.Pool, *, user_id: str, kind: RoomKind | None, name: str, member_ids: list[str]
) -> tuple[Room, bool]:
    """Create a group, or find or create the direct room of the caller and one other user.

    Returns the room and whether it was created.

    Raises:
        InvalidArgumentError: bad kind, name or member list.
        NotFoundError: a member does not exist.
    """
    fields = Fields()
    if kind is None:
        fields.add("kind", "must be DIRECT or GROUP")
    others = [m for m in rules.user_ids(fields, member_ids, "member_user_ids") if m != user_id]
    if kind is RoomKind.GROUP:
        name = rules.room_name(fields, name)
    elif kind is RoomKind.DIRECT:
        if name:
            fields.add("name", "must be empty for a direct room")
        if len(member_ids) != 1 or not others:
            fields.add("member_user_ids", "a direct room needs exactly one other user")
    fields.done()
    async with pool.acquire() as conn, conn.transaction():
        if kind is RoomKind.GROUP:
            rows = await insert_members(conn, _INSERT_GROUP, name, user_id, [user_id, *others])
            room_id, created = str(rows[0]["room_id"]), True
        else:
            room_id, created = await _direct_room(conn, user_id, others[0])
        return await load_room(conn, user_id, room_id), created


async def _direct_room(conn: Connection, user_id: str, other_id: str) -> tuple[str, bool]:
    key = ":".join(sorted((user_id, other_id)))
    room_id: str | None = await conn.fetchval(_INSERT_DIRECT, key)
    if room_id is None:  # exists, or a concurrent call just created it (ON CONFLICT waited for it)
        existing: str = await conn.fetchval(_DIRECT_BY_KEY, key)
        return existing, False
    await insert_members(conn, INSERT_MEMBERS, room_id, [user_id, other_id])
    return room_id, True


async def insert_members(conn: Connection, sql: str, *args: object) -> list[asyncpg.Record]:
    """Run an insert of room members (INSERT_MEMBERS: room, user ids); the rows of those added."""
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
    return await load_room(conn, user_id, parse_uuid(room_id, "room_id"))


async def load_room(conn: Db, user_id: str, room_id: str) -> Room:
    row = await conn.fetchrow(_ROOM_BY_ID, user_id, room_id)
    if row is None:
        raise NotFoundError(NOT_FOUND)
    return (await _rooms_with_members(conn, [row]))[0]


async def _rooms_with_members(conn: Db, rows: list[asyncpg.Record]) -> list[Room]:
    members: dict[str, list[Member]] = {str(r["room_key"]): [] for r in rows}
    for m in await conn.fetch(_MEMBERS, list(members)):
        members[m["room_id"]].append(bind(Member, m))
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
    """The caller's rooms, most recently active (as of the first page) first.

    Raises:
        InvalidArgumentError: bad page size or token.
    """
    fields = Fields()
    size = fields.page_size(page_size)
    after: tuple[datetime | None, str | None, str | None] = (None, None, None)
    if page_token:
        after = fields.check(lambda: pagetokens.ROOMS.decode(page_token), after)
    fields.done()
    after_time, after_id, snapshot = after
    rows = await conn.fetch(_ROOMS_PAGE, user_id, after_time, after_id, size + 1, snapshot)
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        token = pagetokens.ROOMS.encode(last["room_activity"], last["room_key"], last["snapshot"])
    return RoomPage(tuple(await _rooms_with_members(conn, rows)), token)
