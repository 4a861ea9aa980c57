"""Authorization checks of the emulator: a gateway API key or an official HS256 JWT.

The emulator verifies tokens itself (hmac/hashlib/base64/json) instead of sharing code with the
SDK, so that a bug in the SDK's signing cannot be hidden by the same bug in the checker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from typing import Any

__all__ = ["check_authorization"]


def _b64url_decode(segment: str) -> bytes:
    padded = segment + "=" * (-len(segment) % 4)
    return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)


def _json_object(segment: str) -> dict[str, Any] | None:
    try:
        value = json.loads(_b64url_decode(segment))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def check_authorization(
    header: str | None, *, api_key: str, access_key: str, secret_key: str, now: float
) -> tuple[int, str] | None:
    """Check an ``Authorization`` header value.

    Returns None when it is accepted, else ``(business_code, message)``: 1001 when the header is
    missing or empty, 1002 when the token is invalid (shape, algorithm, signature, issuer),
    1003 when it is not yet valid (``nbf`` after `now`) and 1004 when it has expired.
    """
    if header is None or not header.strip():
        return 1001, "Authorization header is empty"
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        return 1002, "Authorization header must use the Bearer scheme"
    if not token:
        return 1001, "Authorization token is empty"
    if hmac.compare_digest(
        token.encode("utf-8", "surrogateescape"), api_key.encode("utf-8", "surrogateescape")
    ):
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return 1002, "Authorization token is invalid"
    head = _json_object(parts[0])
    claims = _json_object(parts[1])
    if head is None or claims is None:
        return 1002, "Authorization token is invalid"
    if head.get("alg") != "HS256":
        return 1002, "Authorization token algorithm must be HS256"
    try:
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return 1002, "Authorization token signature is invalid"
    expected = hmac.new(
        secret_key.encode(), f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(signature, expected):
        return 1002, "Authorization token signature is invalid"
    if claims.get("iss") != access_key:
        return 1002, "Authorization token issuer is unknown"
    nbf = claims.get("nbf")
    exp = claims.get("exp")
    if (nbf is not None and _number(nbf) is None) or (exp is not None and _number(exp) is None):
        return 1002, "Authorization token claims are invalid"
    if nbf is not None and float(nbf) > now:
        return 1003, "Authorization token is not yet valid"
    if exp is not None and float(exp) <= now:
        return 1004, "Authorization token has expired"
    return None
