"""JWT access and refresh tokens (PyJWT, HS256 pinned)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from server.auth.principal import Principal, Role
from server.errors import UnauthenticatedError

ALGORITHM = "HS256"
LEEWAY_SECONDS = 10
_VERIFIED_CACHE_SIZE = 10_000
_ACCESS = "access"
_REFRESH = "refresh"
_REQUIRED = ["exp", "iat", "sub", "iss", "aud", "typ", "sid"]


@dataclass(frozen=True)
class IssuedToken:
    """A signed token, when it was issued and when it expires (epoch seconds)."""

    token: str
    expires_at: float
    issued_at: int


@dataclass(frozen=True)
class RefreshClaims:
    """What a valid refresh token says."""

    user_id: str
    session_id: str
    jti: str
    expires_at: float


class TokenCodec:
    """Signs and verifies this deployment's tokens."""

    def __init__(
        self, *, secret: str, issuer: str, audience: str, access_ttl_seconds: int, refresh_ttl_seconds: int
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._access_ttl = access_ttl_seconds
        self._refresh_ttl = refresh_ttl_seconds
        # Verified access tokens, so a client reusing one token skips the HMAC and claim checks.
        self._verified: dict[str, Principal] = {}

    def issue_access(self, *, user_id: str, role: Role, session_id: str) -> IssuedToken:
        """A short-lived access token for the authorization metadata."""
        now = int(time.time())
        return self._issue(_ACCESS, user_id, session_id, now, now + self._access_ttl, {"role": role.value})

    def issue_refresh(
        self, *, user_id: str, session_id: str, jti: str, issued: tuple[int, int] | None = None
    ) -> IssuedToken:
        """A single-use refresh token; `jti` is its row in refresh_tokens.

        Given `issued` (the issued_at and expires_at of one issued before), the same token again.
        """
        now = int(time.time())
        issued_at, expires_at = issued or (now, now + self._refresh_ttl)
        return self._issue(_REFRESH, user_id, session_id, issued_at, expires_at, {"jti": jti})

    def _issue(self, typ: str, sub: str, sid: str, iat: int, exp: int, extra: dict[str, str]) -> IssuedToken:
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": sub,
            "sid": sid,
            "typ": typ,
            "iat": iat,
            "exp": exp,
            **extra,
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), float(exp), iat)

    def verify_access(self, token: str) -> Principal:
        """The principal of a valid access token, or UnauthenticatedError saying why not."""
        cached = self._verified.get(token)
        if cached is not None and time.time() < cached.expires_at + LEEWAY_SECONDS:
            return cached
        principal = self._verify_access(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = principal
        return principal

    def _verify_access(self, token: str) -> Principal:
        claims = self._decode(token, _ACCESS)
        try:
            role = Role(str(claims["role"]))
        except (KeyError, ValueError):
            raise UnauthenticatedError("access token has no valid role") from None
        return Principal(
            user_id=str(claims["sub"]),
            role=role,
            session_id=str(claims["sid"]),
            expires_at=float(str(claims["exp"])),
        )

    def verify_refresh(self, token: str) -> RefreshClaims:
        """The claims of a valid refresh token, or UnauthenticatedError saying why not."""
        claims = self._decode(token, _REFRESH)
        jti = claims.get("jti")
        if not isinstance(jti, str):
            raise UnauthenticatedError("refresh token has no jti")
        return RefreshClaims(
            user_id=str(claims["sub"]),
            session_id=str(claims["sid"]),
            jti=jti,
            expires_at=float(str(claims["exp"])),
        )

    def _decode(self, token: str, expected_type: str) -> dict[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("token expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise UnauthenticatedError(f"token algorithm not allowed (only {ALGORITHM})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError("token was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError("token is for another audience") from None
        except jwt.InvalidTokenError:
            # PyJWT's own text describes its parser's view of the bytes: not for the client.
            raise UnauthenticatedError("token is invalid: malformed, or not valid for this server") from None
        if claims.get("typ") != expected_type:
            article = "an" if expected_type == _ACCESS else "a"
            raise UnauthenticatedError(
                f"{claims.get('typ')} token given where {article} {expected_type} token is needed"
            )
        try:
            uuid.UUID(str(claims["sub"]))
            uuid.UUID(str(claims["sid"]))
        except ValueError:
            raise UnauthenticatedError("token subject is malformed") from None
        return claims
