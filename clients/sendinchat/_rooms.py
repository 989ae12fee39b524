"""ChatService on the Client, rooms and members: create, read, list, add, remove, leave."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable

from sendinchat._base import ClientBase
from sendinchat.v1 import chat_pb2


class RoomsMixin(ClientBase):
    """The ChatService room RPCs, one method each (snake_case of the RPC's name)."""

    async def create_room(
        self,
        *,
        kind: chat_pb2.RoomKind.ValueType,
        member_user_ids: Iterable[str],
        name: str = "",
    ) -> chat_pb2.CreateRoomResponse:
        """Create a group room, or the direct room with one other user (one per pair).

        Args:
            kind: ROOM_KIND_GROUP or ROOM_KIND_DIRECT.
            member_user_ids: The other members' ids (the caller is added): exactly one for a
                direct room, up to 100 for a group.
            name: A group's name, 1-100 characters; empty for a direct room.

        Returns:
            The room, and created=False when the direct room existed already.

        Raises:
            InvalidArgumentError: A bad kind, name or member list.
            NotFoundError: A member does not exist.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.CreateRoomRequest(kind=kind, name=name, member_user_ids=list(member_user_ids))
        return await self._authorized(lambda md: self.chat.CreateRoom(request, metadata=md))

    async def get_room(self, room_id: str) -> chat_pb2.Room:
        """A room of the caller's, with its members, last message and the caller's unread count.

        Args:
            room_id: The room's UUID.

        Raises:
            InvalidArgumentError: A bad id.
            NotFoundError: No such room, or the caller is not a member.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.GetRoomRequest(room_id=room_id)
        return (await self._idempotent(lambda md: self.chat.GetRoom(request, metadata=md))).room

    def list_rooms(self, *, page_size: int = 0) -> AsyncGenerator[chat_pb2.Room, None]:
        """The caller's rooms, most recently active first, fetched a page at a time.

        Every page keeps the order the first one saw, so a room that becomes active meanwhile
        is neither skipped nor repeated.

        Args:
            page_size: Rooms per page, 1-100; 0 lets the server choose.

        Raises:
            InvalidArgumentError: A bad page size.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.ListRoomsRequest(page_size=page_size)
        return self._paged(self.chat.ListRooms, request, lambda page: page.rooms)

    async def add_members(self, room_id: str, user_ids: Iterable[str]) -> chat_pb2.Room:
        """Add users to a group room (any member may); members already present are ignored.

        Args:
            room_id: The room's UUID.
            user_ids: The users to add.

        Returns:
            The room after the change.

        Raises:
            InvalidArgumentError: A direct room, or an empty list.
            NotFoundError: No such room of the caller's, or no such user.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.AddMembersRequest(room_id=room_id, user_ids=list(user_ids))
        return (await self._idempotent(lambda md: self.chat.AddMembers(request, metadata=md))).room

    async def remove_member(self, room_id: str, user_id: str) -> chat_pb2.Room:
        """Remove a member from a group room (its owner only); their live streams lose it at once.

        Args:
            room_id: The room's UUID.
            user_id: The member to remove.

        Returns:
            The room after the change.

        Raises:
            InvalidArgumentError: Bad ids.
            NotFoundError: No such room of the caller's, or no such member.
            PermissionDeniedError: The caller is not the owner.
            FailedPreconditionError: The member is the owner.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.RemoveMemberRequest(room_id=room_id, user_id=user_id)
        return (await self._authorized(lambda md: self.chat.RemoveMember(request, metadata=md))).room

    async def leave_room(self, room_id: str) -> None:
        """Leave a group room.

        Args:
            room_id: The room's UUID.

        Raises:
            InvalidArgumentError: A direct room (those cannot be left).
            NotFoundError: No such room of the caller's.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.LeaveRoomRequest(room_id=room_id)
        await self._authorized(lambda md: self.chat.LeaveRoom(request, metadata=md))
