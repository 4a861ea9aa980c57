"""The per-session set of callback tokens, as a small protocol, and the fleet's token format.

A session with a callback receiver gives each create its own token before the create is
sent, ties it to the task id the reply gave, and forgets it when no task came of it or the
session closes. The receiver's in-process implementation lives in ``callbacks``; the fleet's,
shared by every process on one Redis, in ``_redis_callbacks``.

A fleet token is ``<account>.<nonce>.<mac>``: the account's name in Redis, 128 random bits,
and an HMAC-SHA256 of both under the fleet's secret (truncated to 128 bits), so that any
process holding the secret checks a token with no per-process state. The functions here are
pure: values in, values out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Protocol, TypeVar

__all__ = ["CallbackTokens", "fleet_token", "read_fleet_token", "split_fleet_token"]

_Binding = TypeVar("_Binding")

NONCE_BYTES = 16  # 128 bits of `secrets`: unguessable, and the key of the token's binding
_MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 allows >= half the output)
_B64 = r"[A-Za-z0-9_-]"
_SHAPE = re.compile(
    rf"({_B64}{{1,64}})\.({_B64}{{{len(base64.urlsafe_b64encode(bytes(NONCE_BYTES))) - 2}}})"
    rf"\.({_B64}{{{len(base64.urlsafe_b64encode(bytes(_MAC_BYTES))) - 2}}})"
)


class CallbackTokens(Protocol[_Binding]):
    """One session's callback tokens: issued per create, bound to its task, then retired."""

    @property
    def open_tokens(self) -> int:
        """Tokens of this session's creates whose tasks are not yet seen finished."""

    def issue(self) -> tuple[_Binding, str]:
        """A fresh token for one create (its binding and its callback URL), before the send."""

    def bind(self, binding: _Binding, task_id: str) -> None:
        """The create's reply came: tie the token to its task id (an early callback applies)."""

    def discard(self, binding: _Binding) -> None:
        """The create made no task (or none sent with this token): forget the token."""

    def close(self) -> None:
        """The session closed: its tokens are forgotten in this process (in-process tokens
        get 404 from then on; a fleet's bindings outlive the session, see ``_redis_callbacks``)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, account: str, nonce: str) -> str:
    digest = hmac.new(secret, f"{account}|{nonce}".encode("ascii"), hashlib.sha256).digest()
    return _b64(digest[:_MAC_BYTES])


def fleet_token(secret: bytes, account: str, nonce: bytes) -> str:
    """The token of one create of ``account``: ``account.nonce.mac``, URL-safe."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce has {NONCE_BYTES} bytes")
    text = _b64(nonce)
    token = f"{account}.{text}.{_mac(secret, account, text)}"
    if _SHAPE.fullmatch(token) is None:
        raise ValueError(f"an account name is 1 to 64 URL-safe characters, got {account!r}")
    return token


def split_fleet_token(token: object) -> tuple[str, str, str] | None:
    """``(account, nonce, mac)`` when ``token`` has a fleet token's shape, else None."""
    if not isinstance(token, str) or len(token) > 128:
        return None
    match = _SHAPE.fullmatch(token)
    if match is None:
        return None
    account, nonce, mac = match.groups()
    return account, nonce, mac


def read_fleet_token(secrets: tuple[bytes, ...], token: object) -> tuple[str, str] | None:
    """``(account, nonce)`` when ``token`` was made under one of ``secrets``, else None.

    The MAC is compared in constant time; a token of the right shape takes as long to refuse
    whichever part of it is wrong.
    """
    parts = split_fleet_token(token)
    if parts is None:
        return None
    account, nonce, mac = parts
    good = False
    for secret in secrets:
        good |= hmac.compare_digest(_mac(secret, account, nonce), mac)
    return (account, nonce) if good else None
