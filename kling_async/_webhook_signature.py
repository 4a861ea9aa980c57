"""Kling's Webhook Signature (the Standard Webhooks scheme), as pure decisions.

When the account has a Webhook Secret, Kling signs every callback: ``webhook-id``,
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``
of ``"{id}.{timestamp}.{raw body}"``; several space-separated during a secret rotation). The
functions here read the secrets and the headers and decide, from values alone (the body's
bytes and *now*, on whichever clock the caller chose): no I/O, no clock, no event loop
(docs/callbacks.md "Signed callbacks").

The HMAC is `standardwebhooks`' (``Webhook(secret).sign``), Kling's recommended library;
its ``verify()`` is not used, because it reads the local clock, which may be minutes off
Kling's, and parses the body: here every signature is compared in constant time and the
timestamp is checked against the *now* the caller passes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from standardwebhooks import Webhook

__all__ = [
    "ENV_VAR",
    "TOLERANCE",
    "Refusal",
    "Signer",
    "WebhookHeaders",
    "read_headers",
    "read_secrets",
]

ENV_VAR = "KLING_WEBHOOK_SECRET"
"""Where the secrets come from when none are given (several: spaces or commas between)."""
TOLERANCE = 300
"""Seconds a timestamp may be from now, either way, before it is refused (5 minutes)."""
INSTALL = "pip install 'kling-async[callbacks]'"

_PREFIX = "whsec_"
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_SEPARATORS = re.compile(r"[\s,]+")
# Whole seconds, as Kling writes them: up to 10 digits (to the year 2286; more would be a
# date Python cannot represent).
_TIMESTAMP = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ID = 256  # characters of a webhook-id
_MAX_SIGNATURES = 16  # signatures in one header (two during a rotation)
_MAX_SIGNATURE_HEADER = 4096
_NAMES = {"webhook-id": "id", "webhook-timestamp": "timestamp", "webhook-signature": "signature"}


class Refusal(enum.Enum):
    """Why a callback was refused (said in a debug log line; the reply is 401 for each)."""

    UNSIGNED = "no valid webhook-id, webhook-timestamp and webhook-signature headers"
    FORGED = "no signature matches a webhook secret"
    STALE = "webhook-timestamp more than 5 minutes from now"


@attrs.frozen(kw_only=True)
class WebhookHeaders:
    """The three signature headers of one callback, read and checked for shape."""

    id: str
    timestamp: int
    signatures: tuple[str, ...]  # every ``v1,...`` value, in the order sent


def read_headers(
    headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | None,
) -> WebhookHeaders | None:
    """The signature headers (names in any case), or None when one is missing, repeated or
    malformed. ``headers`` is a mapping (a multidict's repeated names count) or ASGI-style
    ``(name, value)`` pairs of ``bytes`` or ``str``."""
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for name, value in pairs:
        key = (name.decode("latin-1") if isinstance(name, bytes) else str(name)).lower()
        field = _NAMES.get(key)
        if field is None:
            continue
        if field in found:
            return None  # a repeated header is ambiguous: which one did Kling sign?
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if not text.isascii():
            return None
        found[field] = text.strip()
    message_id, timestamp, signature = (found.get(f) for f in ("id", "timestamp", "signature"))
    if not message_id or not timestamp or not signature:
        return None
    if len(message_id) > _MAX_ID or not message_id.isprintable():
        return None
    if _TIMESTAMP.fullmatch(timestamp) is None or len(signature) > _MAX_SIGNATURE_HEADER:
        return None
    signatures = tuple(part for part in signature.split(" ") if part.startswith("v1,"))
    if not signatures or len(signatures) > _MAX_SIGNATURES:
        return None
    return WebhookHeaders(id=message_id, timestamp=int(timestamp), signatures=signatures)


def read_secrets(given: object, env: str | None) -> tuple[str, ...]:
    """The webhook secrets: ``given`` (a str, or a sequence of str for a rotation), else the
    environment variable's value (spaces or commas between secrets), else none.

    Each is ``whsec_<base64>`` (the prefix optional, as Standard Webhooks allows). A
    malformed one is a ValueError that says which one by its position, never its text.
    """
    if given is None:
        found = tuple(part for part in _SEPARATORS.split(env or "") if part)
        where = ENV_VAR
    elif isinstance(given, str):
        found, where = (given,), "webhook_secret"
    elif isinstance(given, Sequence) and not isinstance(given, (bytes, bytearray)):
        found, where = tuple(given), "webhook_secret"
        if not found:
            raise ValueError("webhook_secret must hold at least one secret (or be None)")
    else:
        raise TypeError(
            f"webhook_secret must be a str or a sequence of str, not {type(given).__name__}"
        )
    for index, secret in enumerate(found, 1):
        if not isinstance(secret, str):
            raise TypeError(f"webhook secret #{index} of {where} is not a str")
        if _key(secret) is None:
            raise ValueError(
                f"webhook secret #{index} of {where} is not a Webhook Secret "
                f"({_PREFIX}<base64>, as Kling's console shows it)"
            )
    return found


def _key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret, or None when it is malformed."""
    body = secret.removeprefix(_PREFIX)
    if _BASE64.fullmatch(body) is None:
        return None
    bare = body.rstrip("=")  # padding is optional, as Standard Webhooks reads it
    try:
        key = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


class Signer:
    """Checks callbacks against one or more secrets (any of them may have signed).

    It holds no state but the secrets, so any web worker checks any callback. Its repr
    names how many secrets it holds, never them.
    """

    __slots__ = ("_webhooks",)

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("a Signer needs at least one secret")
        try:
            from standardwebhooks import Webhook
        except ImportError:
            raise RuntimeError(
                f"webhook_secret needs the standardwebhooks package: {INSTALL}"
            ) from None
        webhooks: list[Webhook] = []
        for index, secret in enumerate(secrets, 1):
            try:
                webhooks.append(Webhook(secret))
            except Exception:  # the library's message might quote it: say which, not what
                raise ValueError(f"webhook secret #{index} is not a Webhook Secret") from None
        self._webhooks = tuple(webhooks)

    def __repr__(self) -> str:
        return f"<Signer of {len(self._webhooks)} webhook secret(s)>"

    def sign(self, message_id: str, timestamp: int, body: bytes) -> tuple[str, ...]:
        """``v1,<signature>`` of the message under each secret (what Kling sends)."""
        when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
        return tuple(webhook.sign(message_id, when, body) for webhook in self._webhooks)

    def check(
        self, headers: WebhookHeaders | None, body: bytes, now: float, *more: float
    ) -> Refusal | None:
        """None when ``body`` carries a valid signature with a timestamp within `TOLERANCE`
        of ``now`` or of one of ``more`` (Unix seconds on the clocks the caller trusts);
        else why not.

        Every expected signature is compared with every one sent, in constant time, with no
        early exit: how long it takes depends on how many there are, not on which matched.
        """
        if headers is None:
            return Refusal.UNSIGNED
        good = 0
        for expected in self.sign(headers.id, headers.timestamp, body):
            wanted = expected.encode("ascii")
            for sent in headers.signatures:
                good |= hmac.compare_digest(wanted, sent.encode("ascii"))
        if not good:
            return Refusal.FORGED
        if all(abs(headers.timestamp - clock) > TOLERANCE for clock in (now, *more)):
            return Refusal.STALE
        return None
