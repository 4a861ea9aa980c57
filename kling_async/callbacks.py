"""CallbackReceiver: Kling's callbacks, checked and turned into hints for the sessions' waits.

Kling POSTs the bare task object to a task's ``callback_url`` when its status changes, maybe
several times, in any order, and unsigned unless the account has a Webhook Secret
(docs/callbacks.md "Security model"). An unsigned callback is a hint, never the truth: it
is tied to its create by an unguessable one-time token in the URL (never by the body's
``task_id`` alone), checked (size, shape, task id), and a final status is, with ``confirm``
on, confirmed by one query that the waits themselves make (``_watch``). With
``webhook_secret`` every callback must carry Kling's signature (``_webhook_signature``),
checked on the raw bytes before anything is parsed; a signed callback is Kling's word and
needs no confirming query. The core here never awaits but for the fleet's Redis;
`CallbackReceiver.aiohttp_app` and `CallbackReceiver.asgi_app` are thin adapters around
`CallbackReceiver.deliver`, in the way of Stripe's and Standard Webhooks' verifiers:
constant-time token look-up, size caps, "verify, then trust".

With ``fleet=`` (a Redis URL or client, as ``KlingSession(fleet=...)`` takes) the receiver
also takes the fleet's tokens (``_redis_callbacks``): any web worker checks any session's
token by its HMAC, records the callback in Redis, and the waits wake wherever they are.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _urls
from ._asgi_web import ASGIApp, asgi_receiver
from ._callback_links import Binding, Bindings, SessionLink, parse_callback
from ._callback_tokens import CallbackTokens, split_fleet_token
from ._fleet import check_fleet
from ._webhook_signature import ENV_VAR, Signer, WebhookHeaders, read_headers, read_secrets
from .errors import FleetError

if TYPE_CHECKING:
    import redis.asyncio
    from aiohttp import web

    from ._fleet import Fleet
    from ._redis_callbacks import FleetReceiver
    from ._watch import Watcher

__all__ = ["CallbackReceiver"]

logger = logging.getLogger("kling_async")

# webhook-ids of signed callbacks taken, per receiver, so that a redelivery is dropped.
_SEEN_KEPT = 4096
_REASONS = {
    200: "ok",
    400: "not a task object of this task",
    401: "missing, invalid or stale webhook signature",
    404: "unknown callback token",
    405: "only POST",
    413: "body too large",
    503: "not recorded (the fleet's store is unreachable): send it again later",
}
# A 503 asks Kling to send the callback again; Retry-After says when (seconds).
_RETRY_AFTER = "5"
_HEADERS = {503: (("retry-after", _RETRY_AFTER),)}

Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


class CallbackReceiver:
    """Receives Kling's callbacks for one or more sessions and wakes their waits.

    Mount it where ``public_url`` is reached from the internet (``https://``; plain
    ``http://`` only on loopback), for example ``https://app.example.com/kling/callbacks``,
    and pass it as ``KlingSession(callbacks=receiver)``: each ``extend()`` without its own
    ``callback_url`` then gets ``public_url + "/" + token``, with an unguessable token for
    that create alone. Serve it with `aiohttp_app`, `asgi_app` or `deliver`.

    A callback is a hint: an unknown token gets 404, a body over ``max_body_bytes`` 413, a
    body that is not a task object of that create 400. With ``confirm`` (the default) a
    callback that says done makes the session confirm it with one query before a wait
    returns; ``confirm=False`` trusts the body, for a receiver nobody else can reach. Waits
    on tasks whose callbacks come here poll only every ``safety_interval`` seconds, so a lost
    callback delays a wait but never hangs it. A final callback for a task nobody waits on
    retires its token at once: finished creates keep no memory, and a later wait confirms.

    ``fleet`` (a Redis URL or a ``redis.asyncio.Redis``, borrowed and never closed; the
    same Redis as the sessions') lets every web worker of a fleet take every session's
    callbacks: a session opened with ``fleet=`` and this receiver gets tokens that any
    worker's receiver checks by their HMAC under a secret kept in Redis (no per-process
    state), each callback is recorded in Redis, and the waits on its task wake in every
    process. When Redis does not answer a callback gets 503 with ``Retry-After`` (so that
    Kling sends it again), never a 200 for a callback not recorded. A session *without*
    ``fleet=`` beside such a receiver keeps today's in-process tokens: only this process's
    receiver knows them, and another worker answers its callbacks 404 (its waits then
    poll every ``safety_interval``); give every session of a fleet ``fleet=``. Call
    `aclose` to close a Redis client the receiver made from a URL.

    ``webhook_secret`` (a ``whsec_...`` Webhook Secret from Kling's console, or several
    during a rotation; ``KLING_WEBHOOK_SECRET`` when not given, spaces or commas between
    secrets) makes every callback prove it is Kling's: one without a valid signature, or
    whose ``webhook-timestamp`` is more than 5 minutes from now on Kling's clock (as a
    session attached here learned it, else this machine's), gets 401 before its body is
    parsed. A signed callback is trusted as it is (no confirming query), and a redelivery
    of one already taken (the same ``webhook-id``) is answered 200 and dropped. It needs
    the ``standardwebhooks`` package: ``pip install 'kling-async[callbacks]'``.

    Added in version 0.2; ``fleet`` and ``webhook_secret`` in 0.3.
    """

    def __init__(
        self,
        public_url: str,
        *,
        max_body_bytes: int = 65536,
        confirm: bool = True,
        safety_interval: float = 60.0,
        fleet: str | redis.asyncio.Redis | None = None,
        webhook_secret: str | Sequence[str] | None = None,
    ) -> None:
        self._public_url = _public_url(public_url)
        secrets_ = read_secrets(webhook_secret, os.environ.get(ENV_VAR))
        # Checks signatures with the secrets alone: any worker checks any callback.
        self._signer = Signer(secrets_) if secrets_ else None
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise TypeError("max_body_bytes must be an int")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        if not isinstance(confirm, bool):
            raise TypeError(f"confirm must be True or False, not {confirm!r}")
        if (
            isinstance(safety_interval, bool)
            or not isinstance(safety_interval, (int, float))
            or not math.isfinite(safety_interval)
            or safety_interval <= 0
        ):
            raise ValueError(
                f"safety_interval must be a finite number > 0, got {safety_interval!r}"
            )
        self.max_body_bytes = max_body_bytes
        self.confirm = confirm
        self.safety_interval = float(safety_interval)
        self._bindings = Bindings()  # the tokens of the sessions attached in this process
        # webhook-ids of signed callbacks taken here (a fleet's are in Redis), oldest first.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        # The sessions attached, to read Kling's clock from (a signed callback's timestamp).
        self._watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
        self._fleet: FleetReceiver | None = None
        if (checked := check_fleet(fleet)) is not None:
            from ._redis_callbacks import FleetReceiver

            self._fleet = FleetReceiver(checked)

    def __repr__(self) -> str:
        signed = "" if self._signer is None else " signed"
        return f"<CallbackReceiver {self._public_url}{signed} tokens={len(self._bindings)}>"

    @property
    def public_url(self) -> str:
        """Where the receiver is reached from outside (no trailing slash)."""
        return self._public_url

    async def aclose(self) -> None:
        """Close the Redis client made from a ``fleet`` URL (a borrowed one stays open)."""
        if self._fleet is not None:
            await self._fleet.aclose()

    async def _attach(
        self,
        watcher: Watcher,
        loop: asyncio.AbstractEventLoop,
        *,
        gateway: bool,
        fleet: Fleet | None = None,
    ) -> CallbackTokens[Any]:
        """A session opened with this receiver: its token set, wired to its watcher (the
        fleet's tokens when both the session and the receiver have a fleet)."""
        self._watchers.add(watcher)
        if fleet is None or self._fleet is None:
            return SessionLink(
                self._bindings,
                watcher,
                loop,
                public_url=self._public_url,
                confirm=self.confirm,
                gateway=gateway,
            )
        from ._redis_callbacks import RedisCallbackTokens

        return await RedisCallbackTokens.attach(
            fleet,
            public_url=self._public_url,
            watcher=watcher,
            gateway=gateway,
            confirm=self.confirm,
        )

    def _known(self, token: str) -> bool:
        """Whether a token may be taken, before the body is read (no I/O)."""
        if self._lookup(token) is not None:
            return True
        return self._fleet is not None and self._fleet.known(token)

    def _lookup(self, token: object) -> Binding | None:
        return self._bindings.lookup(token)

    async def deliver(self, token: str, body: bytes, headers: Headers | None = None) -> int:
        """Take one callback (the token from its URL, the raw body, its HTTP headers: a
        mapping or ``(name, value)`` pairs, read only with ``webhook_secret``); return the
        HTTP status.

        200: taken (a signed one as Kling's word, else as a hint), or a redelivery dropped;
        400: not a task object, or another task's; 401: no valid signature, or a stale one
        (with ``webhook_secret``); 404: unknown token (or a closed session's); 413: over
        ``max_body_bytes``; 503: a fleet token's callback that Redis did not record (send
        it again). It never waits for a query: the waits of the task do that.

        The checks run in this order: the token (constant time), the size, the signature
        (constant time, on the raw bytes), then the body.
        """
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"body must be the raw bytes, not {type(body).__name__}")
        binding = self._lookup(token)
        if binding is None:
            return await self._deliver_fleet(token, body, headers)
        if len(body) > self.max_body_bytes:
            return 413
        raw = bytes(body)
        good, signed = self._verified(headers, raw, binding.link.watcher)
        if not good:
            return 401
        if signed is not None and signed.id in self._seen:
            logger.debug("dropped a redelivered callback (its webhook-id was taken)")
            return 200
        task = parse_callback(raw)
        if task is None:
            return 400
        status = binding.link.receive(binding, task, signed=signed is not None)
        if status == 200 and signed is not None:
            self._remember(signed.id)
        return status

    def _verified(
        self, headers: Headers | None, body: bytes, watcher: Watcher | None
    ) -> tuple[bool, WebhookHeaders | None]:
        """Whether the callback may be taken, and its signature's headers (None when the
        receiver has no secret)."""
        if self._signer is None:
            return True, None
        read = read_headers(headers)
        refusal = self._signer.check(read, body, *self._nows(watcher))
        if refusal is not None:
            logger.debug("refused a callback (401): %s", refusal.value)
            return False, None
        return True, read

    def _nows(self, watcher: Watcher | None) -> tuple[float, ...]:
        """Now on this machine's clock and, where the callback's session (or any session
        attached) learned it from Kling's replies, on Kling's: a timestamp fresh on either
        is taken (docs/callbacks.md, "Which clock")."""
        local = time.time()
        candidates: list[Watcher] = [] if watcher is None else [watcher]
        for candidate in (*candidates, *self._watchers):
            offset = candidate.server_clock.offset
            if offset is not None:
                return local, local + offset.total_seconds()
        return (local,)

    def _remember(self, message_id: str) -> None:
        seen = self._seen
        seen[message_id] = None
        if len(seen) > _SEEN_KEPT:
            seen.popitem(last=False)

    async def _deliver_fleet(
        self, token: str, body: bytes | bytearray | memoryview, headers: Headers | None
    ) -> int:
        """A fleet token's callback: checked by its HMAC, recorded in Redis (503 if not)."""
        fleet = self._fleet
        if fleet is None or split_fleet_token(token) is None:
            return 404
        try:
            owner = await fleet.verify(token)
        except FleetError:
            return 503
        if owner is None:
            return 404
        if len(body) > self.max_body_bytes:
            return 413
        raw = bytes(body)
        good, signed = self._verified(headers, raw, None)
        if not good:
            return 401
        task = parse_callback(raw)
        if task is None:
            return 400
        account, nonce = owner
        webhook_id = None if signed is None else signed.id
        confirm = self.confirm and webhook_id is None
        try:
            return await fleet.receive(account, nonce, task, confirm=confirm, webhook_id=webhook_id)
        except FleetError:
            return 503

    def aiohttp_app(self) -> web.Application:
        """An ``aiohttp.web.Application`` serving ``POST /{token}``, for ``add_subapp``."""
        from ._aiohttp_web import receiver_app

        return receiver_app(
            known=self._known,
            deliver=self._deliver_with(self.deliver),
            limit=self.max_body_bytes,
            reasons=_REASONS,
            headers=_HEADERS,
        )

    def _deliver_with(
        self, deliver: Callable[..., Awaitable[int]]
    ) -> Callable[[str, bytes, Headers], Awaitable[int]]:
        """``deliver`` as the web adapters call it: the headers go along only when a
        secret needs them."""
        if self._signer is None:
            return lambda token, body, headers: deliver(token, body)
        return lambda token, body, headers: deliver(token, body, headers)

    @property
    def asgi_app(self) -> ASGIApp:
        """An ASGI 3 application serving ``POST /{token}`` under its mount point.

        For ``fastapi_app.mount("/kling/callbacks", receiver.asgi_app)`` (Starlette alike):
        the token is read from ``scope["path"]`` past ``scope["root_path"]``.
        """
        return asgi_receiver(
            known=self._known,
            deliver=self._deliver_with(self.deliver),
            limit=self.max_body_bytes,
            reasons=_REASONS,
            headers=_HEADERS,
        )


def _public_url(url: object) -> str:
    """Check the receiver's public URL: https, or http on loopback; no query or fragment."""
    parsed = _urls.http_url(url, "public_url")
    assert isinstance(url, str)  # http_url raised TypeError otherwise
    if _urls.insecure(parsed):
        raise ValueError(
            f"public_url must be https:// (plain http:// only on loopback), got {url!r}: "
            "callbacks carry the token that admits them"
        )
    if parsed.query or parsed.fragment:
        raise ValueError(f"public_url must have no query or fragment, got {url!r}")
    return url.rstrip("/")
