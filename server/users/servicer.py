"""UserService: transport for the users domain.

Register, GetMe, GetUser, ChangePassword: server/users/service.py. Login, RefreshToken, Logout:
server/users/signin.py.
"""

from __future__ import annotations

import grpc

from sendinchat.v1 import users_pb2, users_pb2_grpc
from server.auth.principal import Role, current_principal
from server.db.pool import Pool
from server.protoconv import timestamp
from server.users import service, signin
from server.users.throttle import peer_host

_ROLES = {Role.USER: users_pb2.ROLE_USER, Role.ADMIN: users_pb2.ROLE_ADMIN}


def _user(user: service.User) -> users_pb2.User:
    return users_pb2.User(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        role=_ROLES[user.role],
        create_time=timestamp(user.created_at),
    )


def _profile(user: service.User) -> users_pb2.UserProfile:
    return users_pb2.UserProfile(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        create_time=timestamp(user.created_at),
    )


def _tokens(pair: signin.TokenPair) -> users_pb2.TokenPair:
    return users_pb2.TokenPair(
        access_token=pair.access_token,
        access_token_expire_time=timestamp(pair.access_expires_at),
        refresh_token=pair.refresh_token,
        refresh_token_expire_time=timestamp(pair.refresh_expires_at),
        token_type="Bearer",
    )


class UserServicer(users_pb2_grpc.UserServiceServicer):
    """Registration, login, tokens and profiles."""

    def __init__(self, pool: Pool, deps: service.UserDeps) -> None:
        self._pool = pool
        self._deps = deps

    async def Register(
        self,
        request: users_pb2.RegisterRequest,
        context: grpc.aio.ServicerContext[users_pb2.RegisterRequest, users_pb2.RegisterResponse],
    ) -> users_pb2.RegisterResponse:
        """UserService.Register."""
        user = await service.register(
            self._pool,
            self._deps,
            username=request.username,
            password=request.password,
            display_name=request.display_name,
            peer_host=peer_host(context.peer()),
        )
        return users_pb2.RegisterResponse(user=_user(user))

    async def Login(
        self,
        request: users_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[users_pb2.LoginRequest, users_pb2.LoginResponse],
    ) -> users_pb2.LoginResponse:
        """UserService.Login."""
        pair, user = await signin.login(
            self._pool,
            self._deps,
            username=request.username,
            password=request.password,
            peer_host=peer_host(context.peer()),
        )
        return users_pb2.LoginResponse(tokens=_tokens(pair), user=_user(user))

    async def RefreshToken(
        self,
        request: users_pb2.RefreshTokenRequest,
        context: grpc.aio.ServicerContext[users_pb2.RefreshTokenRequest, users_pb2.RefreshTokenResponse],
    ) -> users_pb2.RefreshTokenResponse:
        """UserService.RefreshToken."""
        pair = await signin.refresh(
            self._pool, self._deps, refresh_token=request.refresh_token, request_id=request.request_id
        )
        return users_pb2.RefreshTokenResponse(tokens=_tokens(pair))

    async def Logout(
        self,
        request: users_pb2.LogoutRequest,
        context: grpc.aio.ServicerContext[users_pb2.LogoutRequest, users_pb2.LogoutResponse],
    ) -> users_pb2.LogoutResponse:
        """UserService.Logout."""
        ended = await signin.logout(
            self._pool, self._deps, principal=current_principal(), all_sessions=request.all_sessions
        )
        return users_pb2.LogoutResponse(ended_sessions=ended)

    async def GetMe(
        self,
        request: users_pb2.GetMeRequest,
        context: grpc.aio.ServicerContext[users_pb2.GetMeRequest, users_pb2.GetMeResponse],
    ) -> users_pb2.GetMeResponse:
        """UserService.GetMe."""
        user = await service.get_user(self._pool, user_id=current_principal().user_id)
        return users_pb2.GetMeResponse(user=_user(user))

    async def GetUser(
        self,
        request: users_pb2.GetUserRequest,
        context: grpc.aio.ServicerContext[users_pb2.GetUserRequest, users_pb2.GetUserResponse],
    ) -> users_pb2.GetUserResponse:
        """UserService.GetUser."""
        key = request.WhichOneof("lookup")
        user = await service.get_user(
            self._pool,
            user_id=request.user_id if key == "user_id" else None,
            username=request.username if key == "username" else None,
        )
        return users_pb2.GetUserResponse(user=_profile(user))

    async def ChangePassword(
        self,
        request: users_pb2.ChangePasswordRequest,
        context: grpc.aio.ServicerContext[users_pb2.ChangePasswordRequest, users_pb2.ChangePasswordResponse],
    ) -> users_pb2.ChangePasswordResponse:
        """UserService.ChangePassword."""
        await service.change_password(
            self._pool,
            self._deps,
            principal=current_principal(),
            old_password=request.old_password,
            new_password=request.new_password,
            peer_host=peer_host(context.peer()),
        )
        return users_pb2.ChangePasswordResponse()
