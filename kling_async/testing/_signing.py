"""How the emulator signs its callbacks, as Kling does with a Webhook Secret.

Standard Webhooks, written out here with the standard library (the emulator shares no code
with the SDK, so that a bug in one is not hidden by the other): ``webhook-id``,
``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, ``v1,`` + base64 of
HMAC-SHA256 of ``"{id}.{timestamp}.{body}"`` under the secret's base64-decoded key, one
signature per secret (several during a rotation), space-separated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from kling_async.testing._fault import Fault

__all__ = ["signature_headers", "webhook_keys"]

_PREFIX = "whsec_"


def webhook_keys(secret: str | Sequence[str] | None) -> tuple[bytes, ...]:
    """The HMAC keys of ``whsec_<base64>`` secrets (none for None); ValueError when one is
    malformed (its text is not repeated)."""
    if secret is None:
        return ()
    found = (secret,) if isinstance(secret, str) else tuple(secret)
    keys = []
    for index, one in enumerate(found, 1):
        if not isinstance(one, str):
            raise TypeError(f"webhook secret #{index} must be a str")
        try:
            key = base64.b64decode(one.removeprefix(_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise ValueError(f"webhook secret #{index} is not whsec_<base64>")
        keys.append(key)
    return tuple(keys)


def signature_headers(
    keys: tuple[bytes, ...], message_id: str, now: float, body: bytes, fault: Fault | None
) -> dict[str, str]:
    """The signature headers of one delivery at ``now`` (none without keys), with
    ``Fault.callback_bad_signature`` (a key nobody has) or ``Fault.callback_stale`` (a
    timestamp ``seconds`` old) applied."""
    kind = None if fault is None else fault.kind
    if kind == "callback_bad_signature":
        keys = (secrets.token_bytes(32),)
    if not keys:
        return {}
    age = (fault.seconds or 0.0) if fault is not None and kind == "callback_stale" else 0.0
    stamp = int(now - age)
    content = f"{message_id}.{stamp}.".encode() + body
    signatures = " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signatures,
    }
