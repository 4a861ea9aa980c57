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
import functools
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import cattrs

from . import _urls
from ._callback_tokens import CallbackTokens, split_fleet_token
from ._converter import converter, load_json
from ._fleet import check_fleet
from ._schedule import newer
from ._webhook_signature import ENV_VAR, Signer, WebhookHeaders, read_headers, read_secrets
from .errors import FleetError
from .models import Task

if TYPE_CHECKING:
    import redis.asyncio
    from aiohttp import web

    from ._fleet import Fleet
    from ._redis_callbacks import FleetReceiver
    from ._watch import Watcher

__all__ = ["CallbackReceiver"]

logger = logging.getLogger("kling_async")

_TOKEN_BYTES = 24  # 192 bits of `secrets`: unguessable (the issue asks for >= 128)
_TOKEN_LENGTH = len(secrets.token_urlsafe(_TOKEN_BYTES))
# A callback that beats the create's reply is kept (the newest one per token) this long.
_EARLY_MAX_AGE = 600.0
# Tokens of tasks seen finished, kept per session so that late duplicates get 200, not 404.
_FINISHED_KEPT = 1024
# webhook-ids of signed callbacks taken, per receiver, so that a redelivery is dropped.
_SEEN_KEPT = 4096
_TASK_HOOK = converter.get_structure_hook(Task)
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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_callback(body: bytes) -> Task | None:
    """The task a callback body describes, or None when it is not a task object.

    Kling sends the bare task object; an envelope with code 0 around it is accepted too.
    """
    try:
        document = load_json(body)  # amounts stay exact decimals
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict) and "task_id" not in document and document.get("code") == 0:
        document = document.get("data")
    if not isinstance(document, dict):
        return None
    try:
        return _TASK_HOOK(document, Task)  # type: ignore[no-any-return]
    except (
        cattrs.BaseValidationError,
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        OverflowError,
        RecursionError,
    ):
        return None


class _Binding:
    """One create's token: before the reply, an early callback; after, its task id."""

    __slots__ = (
        "alias",
        "digest",
        "early",
        "early_at",
        "early_signed",
        "finished",
        "link",
        "task_id",
    )

    def __init__(self, link: _SessionLink, digest: bytes) -> None:
        self.link = link
        self.digest = digest
        self.task_id: str | None = None  # the id the create's reply gave
        self.alias: str | None = None  # a gateway session: Kling's id for the same task
        self.early: Task | None = None
        self.early_at = 0.0
        self.early_signed = False  # the early callback was signed: Kling's word
        self.finished = False

    def agree(self, task: Task) -> Task | None:
        """The callback's task under the create's id, or None when the ids disagree.

        Through a gateway the body carries Kling's id, which may differ from the gateway's:
        the first differing id is taken for Kling's and must be the one from then on.
        """
        if task.task_id == self.task_id:
            return task
        if self.alias is None:
            if not self.link.gateway:
                return None
            self.alias = task.task_id
        elif task.task_id != self.alias:
            return None
        assert self.task_id is not None
        return attrs.evolve(task, task_id=self.task_id)


class _SessionLink:
    """One open session's tokens (`CallbackTokens`, in this process) and its watcher.

    Callbacks become `Watcher.hint` calls on the session's loop; the watcher's ``finished``
    event retires a task's token, which then only answers late duplicates.
    """

    def __init__(
        self,
        receiver: CallbackReceiver,
        watcher: Watcher,
        loop: asyncio.AbstractEventLoop,
        *,
        gateway: bool,
    ) -> None:
        self.receiver = receiver
        self.watcher = watcher
        self.loop = loop
        self.gateway = gateway
        self.closed = False
        self.active: set[bytes] = set()
        self.finished: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.by_task: dict[str, _Binding] = {}  # bound tokens not yet retired
        watcher.events.finished = self.task_finished

    @property
    def open_tokens(self) -> int:
        """Tokens of this session's creates whose tasks are not yet seen finished."""
        return len(self.active)

    def issue(self) -> tuple[_Binding, str]:
        """A fresh token for one create, registered before the create is sent."""
        if self.closed:
            raise RuntimeError("the session's callbacks are closed")
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        binding = _Binding(self, digest)
        self.receiver._bindings[digest] = (token, binding)
        self.active.add(digest)
        return binding, f"{self.receiver.public_url}/{token}"

    def bind(self, binding: _Binding, task_id: str) -> None:
        """The create's reply came: tie the token to its task and apply an early callback."""
        if self.closed or binding.digest not in self.active:
            return
        binding.task_id = task_id
        self.by_task[task_id] = binding
        early, binding.early = binding.early, None
        if early is not None and time.monotonic() - binding.early_at <= _EARLY_MAX_AGE:
            agreed = binding.agree(early)
            if agreed is not None:
                confirm = self.receiver.confirm and not binding.early_signed
                self.watcher.hint(task_id, agreed, confirm=confirm)
        if self.watcher.seen_done(task_id):
            self.retire(binding)

    def discard(self, binding: _Binding) -> None:
        """The create made no task (or none sent with this token): forget the token."""
        self.active.discard(binding.digest)
        self.receiver._bindings.pop(binding.digest, None)

    def task_finished(self, task_id: str) -> None:
        """The watcher needs no more callbacks of ``task_id``: retire its token."""
        binding = self.by_task.get(task_id)
        if binding is not None:
            self.retire(binding)

    def retire(self, binding: _Binding) -> None:
        """Its task was seen finished: keep the token only to answer late duplicates."""
        if self.closed or binding.finished or binding.digest not in self.active:
            return
        if binding.task_id is not None and self.by_task.get(binding.task_id) is binding:
            del self.by_task[binding.task_id]
        binding.finished = True
        self.active.discard(binding.digest)
        finished = self.finished
        finished[binding.digest] = None
        if len(finished) > _FINISHED_KEPT:
            oldest, _ = finished.popitem(last=False)
            self.receiver._bindings.pop(oldest, None)

    def receive(self, binding: _Binding, task: Task, *, signed: bool) -> int:
        """Hand a checked callback to the watcher (``signed``: trusted, no confirming query)."""
        if self.closed:
            return 404
        if binding.finished:
            return 200 if binding.agree(task) is not None else 400
        task_id = binding.task_id
        if task_id is None:  # before the create's reply: keep the newest, checked at bind
            if binding.early is None or newer(binding.early, task):
                binding.early = task
                binding.early_at = time.monotonic()
                binding.early_signed = signed
            return 200
        agreed = binding.agree(task)
        if agreed is None:
            return 400
        confirm = self.receiver.confirm and not signed
        hint = functools.partial(self.watcher.hint, task_id, agreed, confirm=confirm)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - deliver() is a coroutine
            running = None
        if running is self.loop:
            hint()
        else:  # another loop or thread serves the receiver: hand it to the session's loop
            try:
                self.loop.call_soon_threadsafe(hint)
            except RuntimeError:  # the session's loop is closed
                return 404
        return 200

    def close(self) -> None:
        """The session closed: its tokens are forgotten (404 from now on)."""
        self.closed = True
        bindings = self.receiver._bindings
        for digest in (*self.active, *self.finished):
            bindings.pop(digest, None)
        self.active.clear()
        self.finished.clear()
        self.by_task.clear()
        events = self.watcher.events
        if events.finished == self.task_finished:
            events.finished = None


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
        # sha256(token) -> (token, binding): looked up by a hash, then compared in constant
        # time, so that answers take no longer for tokens that share a prefix with real ones.
        self._bindings: dict[bytes, tuple[str, _Binding]] = {}
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
            return _SessionLink(self, watcher, loop, gateway=gateway)
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

    def _lookup(self, token: object) -> _Binding | None:
        if not isinstance(token, str) or len(token) != _TOKEN_LENGTH or not token.isascii():
            return None  # every token has this length: that tells nothing
        raw = token.encode("ascii")
        entry = self._bindings.get(hashlib.sha256(raw).digest())
        if entry is None or not hmac.compare_digest(entry[0].encode("ascii"), raw):
            return None
        return entry[1]

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
        refusal = self._signer.check(read, body, self._kling_now(watcher))
        if refusal is not None:
            logger.debug("refused a callback (401): %s", refusal.value)
            return False, None
        return True, read

    def _kling_now(self, watcher: Watcher | None) -> float:
        """Now on Kling's clock, as the callback's session (or any session attached) learned
        it from its replies; this machine's clock while none has (docs/callbacks.md)."""
        candidates: list[Watcher] = [] if watcher is None else [watcher]
        for candidate in (*candidates, *self._watchers):
            offset = candidate.server_clock.offset
            if offset is not None:
                return time.time() + offset.total_seconds()
        return time.time()

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
        return self._asgi

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":  # served on its own: nothing to start or stop
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", "") or "")
        if root and path.startswith(root):
            path = path[len(root) :]
        token = path[1:] if path.startswith("/") else ""
        if scope.get("method") != "POST":
            await _asgi_reply(send, 405, (b"allow", b"POST"))
            return
        if "/" in token or not self._known(token):
            await _asgi_reply(send, 404)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await _asgi_reply(send, 413)
                    return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _asgi_reply(send, 413)
                return
            if not message.get("more_body", False):
                break
        deliver = self._deliver_with(self.deliver)
        await _asgi_reply(send, await deliver(token, bytes(body), scope.get("headers", ())))


async def _asgi_reply(send: Send, status: int, *headers: tuple[bytes, bytes]) -> None:
    body = _REASONS.get(status, "").encode()
    headers += tuple((name.encode(), value.encode()) for name, value in _HEADERS.get(status, ()))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
