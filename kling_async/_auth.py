"""Credentials: a gateway's Bearer key, or Kling's access key + secret key signed into a JWT.

Signing is a pure function of the credentials and the time (docs/concepts.md, "Credentials"):
HS256, ``iss`` = access key, ``exp`` = now + 1800 s, ``nbf`` = now - 5 s. The token cache
refreshes well before expiry; in asyncio signing never awaits, so concurrent requests share
one token and the first one to need a new token signs it for all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import attrs

__all__ = ["BearerKey", "JWTSigner", "sign_jwt"]

TOKEN_LIFETIME = 1800.0  # Kling's recipe: exp = now + 1800 s
NOT_BEFORE_SKEW = 5.0  # nbf = now - 5 s: a server clock a little behind still accepts it
REFRESH_MARGIN = 300.0  # sign a fresh token when the cached one has less than this left

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign_jwt(access_key: str, secret_key: str, now: float) -> str:
    """Return the HS256 JWT Kling expects for ``access_key`` at Unix time ``now``."""
    claims = {
        "iss": access_key,
        "exp": int(now + TOKEN_LIFETIME),
        "nbf": int(now - NOT_BEFORE_SKEW),
    }
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = _HEADER + b"." + payload
    signature = hmac.new(secret_key.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode("ascii")


@attrs.frozen
class BearerKey:
    """A gateway API key, sent as is. Its value never shows in ``repr``."""

    api_key: str = attrs.field(repr=False)

    def authorization(self, now: float) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.api_key}"

    def expire(self, rejected: str) -> bool:
        """A key cannot be refreshed: answer False so the 1004 error is raised as is."""
        return False


@attrs.define
class JWTSigner:
    """Signs and caches the JWT for an access key; the secret never shows in ``repr``."""

    access_key: str
    secret_key: str = attrs.field(repr=False)
    _token: str | None = attrs.field(default=None, init=False, repr=False)
    _expires: float = attrs.field(default=0.0, init=False, repr=False)
    signed: int = attrs.field(default=0, init=False)

    def authorization(self, now: float) -> str:
        """The ``Authorization`` header value, signing a fresh token only when needed."""
        if self._token is None or now >= self._expires - REFRESH_MARGIN:
            self._token = sign_jwt(self.access_key, self.secret_key, now)
            self._expires = now + TOKEN_LIFETIME
            self.signed += 1
        return f"Bearer {self._token}"

    def expire(self, rejected: str) -> bool:
        """Forget the token the server rejected with 1004 so the next request signs anew.

        Concurrent requests rejected with the same token drop it once; one that already
        carries a newer token leaves that alone. Answers True: a retry may now succeed.
        """
        if rejected == f"Bearer {self._token}":
            self._token = None
        return True
