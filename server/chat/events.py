"""The chat events every replica's live streams hear of, and their one wire format.

The format is what PostgreSQL sends as NOTIFY payloads on `chat_events` (written by the SQL
functions in server/db/functions/chat_events.sql), fields separated by '|':

    m|<room>|<sequence>        a message was stored (the messages table has it)
    x|<room>|<user>            a member left or was removed
    r|<room>|<user>|<sequence> a member moved their read mark
    t|<room>|<user>            a member is typing (not stored)
    p|<room>|<user>|<0|1>      a member went offline / came online across all replicas (not stored)

Only the room and what happened travel; the messages table is the log, so a lost event delays a
delivery but loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.validation import INT64_MAX  # a bigint column holds no sequence past it

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SEQUENCE = re.compile(r"[1-9][0-9]{0,18}|0")


@dataclass(frozen=True, slots=True)
class MessageStored:
    """A message was appended to a room's log."""

    room_id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class _MemberEvent:
    room_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class MemberRemoved(_MemberEvent):
    """A member left the room or was removed from it."""


@dataclass(frozen=True, slots=True)
class Typing(_MemberEvent):
    """A member is typing in the room."""


@dataclass(frozen=True, slots=True)
class ReadMarked(_MemberEvent):
    """A member has read the room up to a sequence."""

    sequence: int


@dataclass(frozen=True, slots=True)
class PresenceChanged(_MemberEvent):
    """A member came online in the room (on some replica) or went offline (on all)."""

    online: bool


ChatEvent = MessageStored | MemberRemoved | ReadMarked | Typing | PresenceChanged


def encode(event: ChatEvent) -> str:
    """The wire form of an event."""
    match event:
        case MessageStored(room_id, sequence):
            return f"m|{room_id}|{sequence}"
        case MemberRemoved(room_id, user_id):
            return f"x|{room_id}|{user_id}"
        case ReadMarked(room_id, user_id, sequence):
            return f"r|{room_id}|{user_id}|{sequence}"
        case Typing(room_id, user_id):
            return f"t|{room_id}|{user_id}"
        case PresenceChanged(room_id, user_id, online):
            return f"p|{room_id}|{user_id}|{1 if online else 0}"


def decode(payload: str) -> ChatEvent:
    """The event a payload carries; ValueError when it is not one this format defines."""
    kind, *fields = payload.split("|")
    if not fields or _UUID.fullmatch(fields[0]) is None:
        raise ValueError(f"not a chat event: {payload[:100]!r}")
    room = fields[0]
    if kind == "m" and len(fields) == 2:
        return MessageStored(room, _sequence(fields[1]))
    if len(fields) < 2 or _UUID.fullmatch(fields[1]) is None:
        raise ValueError(f"not a chat event: {payload[:100]!r}")
    user = fields[1]
    if kind == "x" and len(fields) == 2:
        return MemberRemoved(room, user)
    if kind == "t" and len(fields) == 2:
        return Typing(room, user)
    if kind == "r" and len(fields) == 3:
        return ReadMarked(room, user, _sequence(fields[2]))
    if kind == "p" and len(fields) == 3 and fields[2] in ("0", "1"):
        return PresenceChanged(room, user, fields[2] == "1")
    raise ValueError(f"not a chat event: {payload[:100]!r}")


def _sequence(raw: str) -> int:
    if _SEQUENCE.fullmatch(raw) is None or int(raw) > INT64_MAX:
        raise ValueError(f"not a sequence: {raw[:30]!r}")
    return int(raw)
