"""`rooms create|list|members|add|leave`, and finding a room by what a person calls it."""

from __future__ import annotations

import argparse
import re

from sendinchat.cli.output import CliError, Names, date_time, shown, when
from sendinchat.client import Client
from sendinchat.errors import NotFoundError
from sendinchat.v1 import chat_pb2

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ROLES = {chat_pb2.MEMBER_ROLE_OWNER: "owner", chat_pb2.MEMBER_ROLE_MEMBER: "member"}


def title(room: chat_pb2.Room, me_id: str) -> str:
    """A group's name; for a direct room, the other member's username."""
    if room.kind == chat_pb2.ROOM_KIND_GROUP:
        return shown(room.name)
    others = [m.username for m in room.members if m.user_id != me_id]
    return others[0] if others else "(just you)"


async def find_room(client: Client, spec: str, me_id: str, *, create_direct: bool = False) -> chat_pb2.Room:
    """The room a person means by `spec`.

    That is a room id, a group's name, or a username (`@bob` to say so) for the direct room with
    that user, which is created when create_direct is set.
    """
    if _UUID.fullmatch(spec):
        return await client.get_room(spec)
    wanted = spec.removeprefix("@").lower()
    if not spec.startswith("@"):
        groups = [
            room
            async for room in client.list_rooms()
            if room.kind == chat_pb2.ROOM_KIND_GROUP and room.name.lower() == wanted
        ]
        if len(groups) > 1:
            raise CliError(
                f"{len(groups)} of your rooms are called {spec!r}: name one by its id"
                " (see: sendinchat-cli rooms list --ids)"
            )
        if groups:
            return groups[0]
    async for room in client.list_rooms():
        if room.kind == chat_pb2.ROOM_KIND_DIRECT and title(room, me_id).lower() == wanted:
            return room
    if not create_direct:
        raise CliError(f"no room called {spec!r} (see: sendinchat-cli rooms list)")
    try:
        user = await client.get_user(username=wanted)
    except NotFoundError:
        raise CliError(f"no room or user called {spec!r}") from None
    if user.id == me_id:
        raise CliError("that is you; chat with someone else")
    reply = await client.create_room(kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[user.id])
    return reply.room


async def user_ids(client: Client, usernames: list[str]) -> list[str]:
    """The ids of users given by name."""
    ids = []
    for name in usernames:
        try:
            ids.append((await client.get_user(username=name.removeprefix("@"))).id)
        except NotFoundError:
            raise CliError(f"no user called {name!r}") from None
    return ids


async def run(client: Client, args: argparse.Namespace) -> None:
    """One `rooms` subcommand."""
    me = await client.get_me()
    if args.rooms_command == "list":
        await _list(client, me.id, show_ids=args.ids)
    elif args.rooms_command == "create":
        ids = await user_ids(client, args.usernames)
        reply = await client.create_room(kind=chat_pb2.ROOM_KIND_GROUP, name=args.name, member_user_ids=ids)
        others = ", ".join(m.username for m in reply.room.members if m.user_id != me.id) or "nobody else yet"
        print(f"Created {reply.room.name} with {others}. Chat in it: sendinchat-cli chat {reply.room.name!r}")
    elif args.rooms_command == "members":
        room = await find_room(client, args.room, me.id)
        for member in room.members:
            role = _ROLES.get(member.role, "member")
            print(f"{member.username:<24} {role:<7} joined {date_time(member.join_time)}")
    elif args.rooms_command == "add":
        room = await find_room(client, args.room, me.id)
        room = await client.add_members(room.id, await user_ids(client, args.usernames))
        print(f"{title(room, me.id)} now has {len(room.members)} members.")
    elif args.rooms_command == "leave":
        room = await find_room(client, args.room, me.id)
        await client.leave_room(room.id)
        print(f"You left {title(room, me.id)}.")


async def _list(client: Client, me_id: str, *, show_ids: bool) -> None:
    names = Names(client)
    rows = []
    async for room in client.list_rooms():
        for member in room.members:
            names.learn(member.user_id, member.username)
        last = ""
        if room.HasField("last_message") and room.last_message.sequence:
            message = room.last_message
            who = await names.of(message.sender_user_id) if message.sender_user_id else "*"
            last = f"{when(message.create_time)}  {who}: {_one_line(message.text)}"
        kind = "group" if room.kind == chat_pb2.ROOM_KIND_GROUP else "direct"
        unread = f"{room.unread_count} new" if room.unread_count else ""
        row = f"{title(room, me_id):<24} {kind:<6} {unread:>7}  {last}".rstrip()
        rows.append(f"{row}  {room.id}" if show_ids else row)
    print(
        "\n".join(rows)
        if rows
        else "No rooms yet: sendinchat-cli chat USERNAME, or rooms create NAME USERNAME..."
    )


def _one_line(text: str, width: int = 50) -> str:
    flat = " ".join(shown(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
