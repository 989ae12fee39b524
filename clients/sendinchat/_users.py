"""UserService on the Client: registration, sessions and profiles."""

from __future__ import annotations

from sendinchat._base import ClientBase, one_key, translated
from sendinchat.v1 import users_pb2


class UsersMixin(ClientBase):
    """The UserService RPCs, one method each (snake_case of the RPC's name)."""

    async def register(self, username: str, password: str, *, display_name: str = "") -> users_pb2.User:
        """Create a user with the role USER (this does not log in).

        Args:
            username: 3-32 characters of [a-z0-9_.-]; upper case is folded to lower case.
            password: 8-72 bytes of UTF-8.
            display_name: Optional name shown to others, at most 64 characters.

        Returns:
            The user as stored.

        Raises:
            InvalidArgumentError: A bad username, password or display name (see field_violations).
            AlreadyExistsError: The username is taken (reason USERNAME_TAKEN).
        """
        request = users_pb2.RegisterRequest(username=username, password=password, display_name=display_name)
        return (await translated(self.users.Register(request))).user

    async def login(self, username: str, password: str) -> users_pb2.User:
        """Log in and keep the new session's token pair (in the token store, if any) for later calls.

        Args:
            username: The username, any case.
            password: The password.

        Returns:
            The signed-in user.

        Raises:
            InvalidArgumentError: An empty field or a username that breaks the username rule.
            UnauthenticatedError: Unknown user or wrong password (indistinguishable).
            RateLimitedError: Too many attempts; see retry_after_seconds.
        """
        request = users_pb2.LoginRequest(username=username, password=password)
        reply = await translated(self.users.Login(request))
        self._keep(reply.tokens)
        return reply.user

    async def refresh_token(self) -> None:
        """Rotate the token pair now (calls refresh an expired access token by themselves).

        When another process sharing the token store has just rotated it, its pair is taken
        instead: a refresh token works once. A rotation whose reply is lost is retried as the
        same request (its request_id), which the server answers with the pair it issued.

        Raises:
            UnauthenticatedError: Not logged in, or the refresh token is invalid, expired or was
                already used (which ends the session).
        """
        await self._refresh_if_stale(self.tokens)

    async def logout(self, *, all_sessions: bool = False) -> int:
        """End this session (or every session of the user) and forget the tokens.

        Args:
            all_sessions: End every session of the user, on every device, not only this one.

        Returns:
            How many sessions ended.

        Raises:
            UnauthenticatedError: Not logged in, or the session had already ended.
        """
        request = users_pb2.LogoutRequest(all_sessions=all_sessions)
        reply = await self._authorized(lambda md: self.users.Logout(request, metadata=md))
        self._keep(None)
        return reply.ended_sessions

    async def get_me(self) -> users_pb2.User:
        """The logged-in user, role included.

        Raises:
            UnauthenticatedError: Not logged in, or the session ended.
            NotFoundError: The user was deleted.
        """
        reply = await self._idempotent(lambda md: self.users.GetMe(users_pb2.GetMeRequest(), metadata=md))
        return reply.user

    async def get_user(self, *, user_id: str = "", username: str = "") -> users_pb2.UserProfile:
        """Another user's public profile, by id or by username (exactly one).

        Args:
            user_id: The user's UUID.
            username: The username, any case.

        Returns:
            The public profile.

        Raises:
            ValueError: Neither or both of user_id and username were given.
            InvalidArgumentError: A malformed id or username.
            NotFoundError: No such user.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        if one_key(user_id=user_id, username=username) == "user_id":
            request = users_pb2.GetUserRequest(user_id=user_id)
        else:
            request = users_pb2.GetUserRequest(username=username)
        reply = await self._idempotent(lambda md: self.users.GetUser(request, metadata=md))
        return reply.user

    async def change_password(self, old_password: str, new_password: str) -> None:
        """Change the password, which ends every session (this one too); then log in again with it.

        Args:
            old_password: The current password.
            new_password: 8-72 bytes of UTF-8.

        Raises:
            InvalidArgumentError: The new password is out of bounds.
            PermissionDeniedError: The old password is wrong.
            RateLimitedError: Too many wrong old passwords; see retry_after_seconds.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        username = (await self.get_me()).username
        request = users_pb2.ChangePasswordRequest(old_password=old_password, new_password=new_password)
        await self._authorized(lambda md: self.users.ChangePassword(request, metadata=md))
        self._keep(None)
        await self.login(username, new_password)
