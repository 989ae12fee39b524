"""Room membership changes: adding members, removing one, leaving.

Each change posts SYSTEM messages to the room's log and, once its transaction has committed,
announces them and any removal (server/chat/events.py) on the chat bus, so live streams drop a
removed member's subscription at once.
"""

from __future__ import annotations

import asyncpg

from server.chat import events
from server.chat import validation as rules
from server.chat.bus import Publisher
from server.chat.messages import membership
from server.chat.models import MemberRole, Room, RoomKind
from server.chat.rooms import INSERT_MEMBERS, insert_members, load_room
from server.db.pool import Connection
from server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from server.validation import Fields, parse_uuid

_MEMBER_COUNT = "SELECT count(*) FROM room_members WHERE room_id = $1"
_SYSTEM_MESSAGES = """
SELECT (chat_append($1, NULL, NULL, 'system', u.username || $3)).sequence
FROM unnest($2::uuid[]) WITH ORDINALITY AS x(id, n) JOIN users u ON u.id = x.id
ORDER BY x.n
"""
_DELETE_MEMBER = """
WITH gone AS (DELETE FROM room_members WHERE room_id = $1 AND user_id = $2 RETURNING role)
SELECT role, chat_notify_removed($1, $2) FROM gone
"""
_PROMOTE_OLDEST = """
UPDATE room_members SET role = 'owner'
WHERE (room_id, user_id) = (
    SELECT room_id, user_id FROM room_members WHERE room_id = $1 ORDER BY joined_at, user_id LIMIT 1
)
"""


async def add_members(
    pool: asyncpg.Pool, *, user_id: str, room_id: str, member_ids: list[str], bus: Publisher
) -> Room:
    """Add users to a group (any member may); a SYSTEM message records each one who joined.

    Raises:
        InvalidArgumentError: direct room, empty or malformed list.
        NotFoundError: the room (for the caller) or a user.
        FailedPreconditionError: the room would have more than MAX_ROOM_MEMBERS (reason ROOM_FULL).
    """
    fields = Fields()
    room_id = fields.uuid("room_id", room_id)
    ids = rules.user_ids(fields, member_ids, "user_ids")
    if not member_ids:
        fields.add("user_ids", "at least one user")
    fields.done()
    async with pool.acquire() as conn, conn.transaction():
        mine = await membership(conn, room_id, user_id, for_update=True)
        if mine["kind"] != RoomKind.GROUP:
            raise InvalidArgumentError.field("room_id", "members cannot be added to a direct room")
        rows = await insert_members(conn, INSERT_MEMBERS, room_id, ids)
        added = [str(r["user_id"]) for r in rows]
        if added and await conn.fetchval(_MEMBER_COUNT, room_id) > rules.MAX_ROOM_MEMBERS:
            raise FailedPreconditionError(  # the transaction rolls back: nobody was added
                f"a room has at most {rules.MAX_ROOM_MEMBERS} members", reason="ROOM_FULL"
            )
        posted = await _system_messages(conn, room_id, added, " joined")
        room = await load_room(conn, user_id, room_id)
    await bus.publish(*posted)
    return room


async def remove_member(
    pool: asyncpg.Pool, *, user_id: str, room_id: str, member_id: str, bus: Publisher
) -> Room:
    """Remove a member from a group (owner only); their live streams lose the room at once.

    Raises:
        InvalidArgumentError: malformed ids or a direct room.
        NotFoundError: the room (for the caller), or the user is not a member.
        PermissionDeniedError: the caller is not the owner.
        FailedPreconditionError: removing the owner (reason CANNOT_REMOVE_OWNER).
    """
    fields = Fields()
    room_id = fields.uuid("room_id", room_id)
    member_id = fields.uuid("user_id", member_id)
    fields.done()
    async with pool.acquire() as conn, conn.transaction():
        mine = await membership(conn, room_id, user_id, for_update=True)
        if mine["kind"] != RoomKind.GROUP:
            raise InvalidArgumentError.field("room_id", "members cannot be removed from a direct room")
        if mine["role"] != MemberRole.OWNER:
            raise PermissionDeniedError("only the room's owner may remove members")
        if member_id == user_id:
            raise FailedPreconditionError(
                "the owner cannot be removed; leave instead", reason="CANNOT_REMOVE_OWNER"
            )
        if await conn.fetchrow(_DELETE_MEMBER, room_id, member_id) is None:
            raise NotFoundError("the user is not a member of the room")
        posted = await _system_messages(conn, room_id, [member_id], " was removed")
        room = await load_room(conn, user_id, room_id)
    await bus.publish(events.MemberRemoved(room_id, member_id), *posted)
    return room


async def leave_room(pool: asyncpg.Pool, *, user_id: str, room_id: str, bus: Publisher) -> None:
    """Take the caller out of a group; an owner who leaves hands the room to the oldest member.

    Raises:
        InvalidArgumentError: malformed id or a direct room.
        NotFoundError: the room (for the caller).
    """
    room_id = parse_uuid(room_id, "room_id")
    async with pool.acquire() as conn, conn.transaction():
        mine = await membership(conn, room_id, user_id, for_update=True)
        if mine["kind"] != RoomKind.GROUP:
            raise InvalidArgumentError.field("room_id", "a direct room cannot be left")
        posted = await _system_messages(conn, room_id, [user_id], " left")
        await conn.fetchrow(_DELETE_MEMBER, room_id, user_id)
        if mine["role"] == MemberRole.OWNER:
            await conn.execute(_PROMOTE_OLDEST, room_id)
    # In the order the transaction notified them: the leaver's streams drop the room on the second.
    await bus.publish(*posted, events.MemberRemoved(room_id, user_id))


async def _system_messages(
    conn: Connection, room_id: str, user_ids: list[str], what: str
) -> list[events.ChatEvent]:
    """Post `<username><what>` for each user; the event that announces the newest one."""
    if not user_ids:
        return []
    sequences = [int(r[0]) for r in await conn.fetch(_SYSTEM_MESSAGES, room_id, user_ids, what)]
    return [events.MessageStored(room_id, max(sequences))] if sequences else []
