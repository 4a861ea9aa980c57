"""Specification of credentials: the gateway Bearer key and Kling's HS256 JWT (api.md "auth")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_async._auth import BearerKey, JWTSigner, sign_jwt

NOW = 1_762_419_870.0
ACCESS_KEY = "AK-8f3c2b1e"
SECRET_KEY = "SK-very-secret-4d5e6f"


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verify(token: str, secret: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the HS256 signature ourselves and return (header, claims)."""
    header, payload, signature = token.split(".")
    expected = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(expected, b64url_decode(signature)), "bad signature"
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def bare(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    assert "Bearer" == scheme
    return token


# --- sign_jwt -------------------------------------------------------------------------------


def test_jwt_header_is_hs256() -> None:
    """The JWT header says HS256 and JWT."""
    header, _ = verify(sign_jwt(ACCESS_KEY, SECRET_KEY, NOW), SECRET_KEY)
    assert {"alg": "HS256", "typ": "JWT"} == header


def test_jwt_claims() -> None:
    """``iss`` is the access key, ``exp`` now + 1800 s and ``nbf`` now - 5 s."""
    _, claims = verify(sign_jwt(ACCESS_KEY, SECRET_KEY, NOW), SECRET_KEY)
    expected = {"iss": ACCESS_KEY, "exp": 1_762_421_670, "nbf": 1_762_419_865}
    assert expected == claims


def test_jwt_times_are_integers() -> None:
    """``exp`` and ``nbf`` are whole seconds (NumericDate), even for a fractional now."""
    _, claims = verify(sign_jwt(ACCESS_KEY, SECRET_KEY, NOW + 0.75), SECRET_KEY)
    assert (int, int) == (type(claims["exp"]), type(claims["nbf"]))


def test_jwt_segments_are_unpadded_base64url() -> None:
    """A JWT is three base64url segments without ``=`` padding."""
    token = sign_jwt(ACCESS_KEY, SECRET_KEY, NOW)
    segments = token.split(".")
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert 3 == len(segments)
    assert all(segment and set(segment) <= alphabet for segment in segments)


def test_jwt_signed_with_another_secret_does_not_verify() -> None:
    """The signature depends on the secret key."""
    token = sign_jwt(ACCESS_KEY, SECRET_KEY, NOW)
    with pytest.raises(AssertionError, match="bad signature"):
        verify(token, "another secret")


def test_jwt_is_a_pure_function_of_credentials_and_time() -> None:
    """The same inputs sign the same token; another time signs another."""
    first = sign_jwt(ACCESS_KEY, SECRET_KEY, NOW)
    assert first == sign_jwt(ACCESS_KEY, SECRET_KEY, NOW)
    assert first != sign_jwt(ACCESS_KEY, SECRET_KEY, NOW + 1)


@given(
    access_key=st.text(min_size=1),
    secret_key=st.text(min_size=1),
    now=st.integers(min_value=0, max_value=4_102_444_800),
)
def test_any_credentials_sign_a_verifiable_token(
    access_key: str, secret_key: str, now: int
) -> None:
    """Whatever the keys (non-ASCII included), the token verifies and carries them."""
    _, claims = verify(sign_jwt(access_key, secret_key, float(now)), secret_key)
    assert {"iss": access_key, "exp": now + 1800, "nbf": now - 5} == claims


# --- JWTSigner ------------------------------------------------------------------------------


def test_signer_signs_on_first_use() -> None:
    """The first authorization signs a token: a Bearer JWT valid for the access key."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    assert 0 == signer.signed
    _, claims = verify(bare(signer.authorization(NOW)), SECRET_KEY)
    assert (1, ACCESS_KEY) == (signer.signed, claims["iss"])


def test_signer_reuses_the_token_until_300_s_before_expiry() -> None:
    """Requests up to 1500 s after signing share the cached token."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    first = signer.authorization(NOW)
    later = [signer.authorization(NOW + offset) for offset in (0, 1, 600, 1499, 1499.999)]
    assert ([first] * 5, 1) == (later, signer.signed)


def test_signer_refreshes_within_300_s_of_expiry() -> None:
    """From 1500 s after signing (300 s before ``exp``) a fresh token is signed."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    first = signer.authorization(NOW)
    fresh = signer.authorization(NOW + 1500)
    _, claims = verify(bare(fresh), SECRET_KEY)
    assert (True, 2, int(NOW) + 1500 + 1800) == (fresh != first, signer.signed, claims["exp"])


def test_signer_refreshes_after_expiry() -> None:
    """A token long expired is never sent."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    signer.authorization(NOW)
    _, claims = verify(bare(signer.authorization(NOW + 7200)), SECRET_KEY)
    assert (2, int(NOW) + 7200 + 1800) == (signer.signed, claims["exp"])


def test_signer_caches_the_refreshed_token_too() -> None:
    """After a refresh the new token is cached for its own lifetime."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    signer.authorization(NOW)
    fresh = signer.authorization(NOW + 1500)
    assert (fresh, 2) == (signer.authorization(NOW + 2000), signer.signed)


def test_expire_drops_the_rejected_token() -> None:
    """After 1004, ``expire(rejected)`` answers True and the next request signs anew."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    rejected = signer.authorization(NOW)
    assert signer.expire(rejected) is True
    signer.authorization(NOW + 1)
    assert 2 == signer.signed


def test_expire_with_an_older_token_keeps_the_current_one() -> None:
    """A late 1004 for a token already replaced leaves the newer token alone."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    old = signer.authorization(NOW)
    current = signer.authorization(NOW + 1600)
    assert signer.expire(old) is True
    assert (current, 2) == (signer.authorization(NOW + 1601), signer.signed)


def test_concurrent_rejections_of_one_token_sign_once() -> None:
    """Several requests rejected with the same token make one new token, not several."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    rejected = signer.authorization(NOW)
    signer.expire(rejected)
    fresh = signer.authorization(NOW + 1)
    signer.expire(rejected)
    assert (fresh, 2) == (signer.authorization(NOW + 2), signer.signed)


# --- BearerKey ------------------------------------------------------------------------------


def test_bearer_key_is_sent_as_is() -> None:
    """A gateway key goes out unchanged as a Bearer credential, whatever the time."""
    key = BearerKey("sk-gateway-123")
    assert ["Bearer sk-gateway-123"] * 2 == [key.authorization(NOW), key.authorization(0)]


def test_bearer_key_cannot_be_refreshed() -> None:
    """``expire`` answers False: a 1004 with a fixed key is raised, not retried."""
    key = BearerKey("sk-gateway-123")
    assert key.expire("Bearer sk-gateway-123") is False


# --- secrets stay out of reprs ----------------------------------------------------------------


def test_bearer_key_repr_hides_the_key() -> None:
    """The API key never shows in ``repr`` or ``str``."""
    key = BearerKey("sk-gateway-123")
    assert "sk-gateway-123" not in repr(key)
    assert "sk-gateway-123" not in str(key)


def test_signer_repr_hides_the_secret_and_the_token() -> None:
    """The secret key and the signed token never show; the access key may."""
    signer = JWTSigner(ACCESS_KEY, SECRET_KEY)
    token = bare(signer.authorization(NOW))
    text = repr(signer) + str(signer)
    assert (False, False, True) == (SECRET_KEY in text, token in text, ACCESS_KEY in text)
