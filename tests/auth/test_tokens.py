"""Token attacks on an authenticated unary RPC: each is UNAUTHENTICATED and the handler never runs."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest

from sendinchat.v1 import users_pb2
from server.users.servicer import UserServicer
from tests.harness import TEST_JWT_SECRET
from tests.helpers import bearer, signed_up

ISSUER = AUDIENCE = "sendinchat"


def _claims(user_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "sid": str(uuid.uuid4()),
        "typ": "access",
        "role": "user",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], secret: str = TEST_JWT_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # HS512 with the (HS256-sized) test secret: PyJWT warns about the key length.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=algorithm)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _forged(claims: dict[str, Any], algorithm: str, signature: str = "c2lnbmF0dXJl") -> str:
    """A token with any header algorithm; the signature is junk (or empty for alg none)."""
    return f"{_b64({'alg': algorithm, 'typ': 'JWT'})}.{_b64(claims)}.{signature}"


@pytest.fixture
async def spied(servers, monkeypatch):
    """A server whose GetMe handler records each call that reaches it."""
    calls: list[str] = []
    real = UserServicer.GetMe

    async def get_me(self: UserServicer, request: Any, context: Any) -> users_pb2.GetMeResponse:
        calls.append("GetMe")
        return await real(self, request, context)

    monkeypatch.setattr(UserServicer, "GetMe", get_me)
    server = await servers.start()
    account = await signed_up(server.stubs)
    return server, account, calls


async def _get_me_error(server: Any, metadata: tuple[tuple[str, str], ...] | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=metadata)
    return caught.value


def _without(claim: str) -> Callable[[Any], tuple[tuple[str, str], ...]]:
    return lambda account: bearer(_sign(_claims(account.id, **{claim: None})))


def _raw(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", value),)


ATTACKS: dict[str, tuple[Callable[[Any], tuple[tuple[str, str], ...] | None], str]] = {
    "missing-metadata": (lambda account: None, "missing 'authorization"),
    "basic-scheme": (lambda account: _raw("Basic xyz"), "Bearer <access token>"),
    "bearer-without-token": (lambda account: _raw("Bearer"), "Bearer <access token>"),
    "malformed-token": (lambda account: bearer("not-a-jwt"), "invalid"),
    "expired": (
        lambda account: bearer(
            _sign(_claims(account.id, iat=int(time.time()) - 3600, exp=int(time.time()) - 60))
        ),
        "expired",
    ),
    "other-secret": (
        lambda account: bearer(_sign(_claims(account.id), secret="another-secret-" + "y" * 40)),
        "signature",
    ),
    "alg-none": (lambda account: bearer(_forged(_claims(account.id), "none", signature="")), "algorithm"),
    "hs512": (lambda account: bearer(_sign(_claims(account.id), algorithm="HS512")), "algorithm"),
    "rs256": (lambda account: bearer(_forged(_claims(account.id), "RS256")), "algorithm"),
    "refresh-as-access": (lambda account: bearer(account.tokens.refresh_token), "access token"),
    "wrong-issuer": (lambda account: bearer(_sign(_claims(account.id, iss="someone-else"))), "issuer"),
    "wrong-audience": (lambda account: bearer(_sign(_claims(account.id, aud="someone-else"))), "udience"),
    "unknown-role": (lambda account: bearer(_sign(_claims(account.id, role="root"))), "role"),
    "subject-not-a-uuid": (lambda account: bearer(_sign(_claims("../admin"))), "malformed"),
    **{
        f"no-{claim}": (_without(claim), f"'{claim}'")
        for claim in ("exp", "iat", "sub", "iss", "aud", "typ", "sid")
    },
}


class TestAccessToken:
    async def test_handler_runs_when_the_token_is_valid(self, spied):
        server, account, calls = spied
        crafted = bearer(_sign(_claims(account.id)))
        for metadata in (account.auth, crafted):
            reply = await server.stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=metadata)
            assert reply.user.id == account.id
        assert calls == ["GetMe", "GetMe"]

    @pytest.mark.parametrize("attack", list(ATTACKS))
    async def test_is_unauthenticated_and_handler_never_runs_when_token_is_bad(self, spied, attack):
        server, account, calls = spied
        metadata, message = ATTACKS[attack]
        error = await _get_me_error(server, metadata(account))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert message in (error.details() or "")
        assert calls == []

    async def test_token_is_accepted_when_it_expired_within_the_leeway(self, spied):
        server, account, calls = spied
        now = int(time.time())
        token = _sign(_claims(account.id, iat=now - 600, exp=now - 2))
        reply = await server.stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(token))
        assert reply.user.id == account.id
        assert calls == ["GetMe"]
