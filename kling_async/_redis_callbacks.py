"""Callback tokens shared by a fleet: any web worker's receiver checks and records any callback.

A session of a fleet (``KlingSession(fleet=...)``) whose receiver has ``fleet=`` too issues
fleet tokens (``_callback_tokens.fleet_token``): an HMAC under a secret that lives in Redis,
so that a receiver in any process checks a token with no state of its own. What the token is
bound to lives in Redis as well, under the account's keys:

- ``cb:tok:<nonce>`` (a hash: ``task``, ``gw``, ``alias``, ``done``), written by the
  session's `RedisCallbackTokens.bind` once the create's reply came, kept `TOKEN_TTL` (and
  `DONE_TTL` once the task is seen finished, to answer late duplicates with 200);
- ``cb:early:<nonce>`` (a list), callbacks that beat the bind, kept `EARLY_TTL` and applied
  by the bind (both are Lua scripts, so a callback is either seen bound or found by the bind);
- ``cb:wh:<webhook-id>``, a signed callback recorded, kept `WEBHOOK_ID_TTL`: any worker
  drops a redelivery of one another worker recorded (written once the callback is, so a
  delivery cut short is never dropped; two workers that take one at once both record it,
  which the merge makes harmless).

A callback of a bound token becomes a `_redis_states.Hints` record (a hint on the account's
events stream); every process that waits on the task, the one that made it included,
wakes from that stream through the fleet's task states (``_redis_states``). Closing a
session forgets its tokens in this process only: the bindings stay in Redis until their TTL,
so a task's callbacks keep waking the other processes that wait on it.

Redis operations per task: the bind (one script), one script plus the hint per callback, and
one write once the task is seen finished; issuing a token costs none.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from ._callback_tokens import NONCE_BYTES, fleet_token, read_fleet_token, split_fleet_token
from ._fleet import Fleet, key_of, text
from ._redis_states import Hints
from ._schedule import newer
from ._task_codec import decode_task, encode_task
from .errors import FleetError, FleetUnavailableError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ._watch import Watcher
    from .models import Task

__all__ = [
    "DONE_TTL",
    "EARLY_TTL",
    "SECRET_KEY",
    "TOKEN_TTL",
    "WEBHOOK_ID_TTL",
    "FleetReceiver",
    "RedisCallbackTokens",
    "account_key",
    "agree",
]

logger = logging.getLogger("kling_async")

SECRET_KEY = "kling-async:cb:secret"
"""The fleet-wide secret of callback tokens (hex of 32 random bytes; one per Redis, for every
account, made once with SET NX). No account is named ``cb``: accounts are hex digests."""
TOKEN_TTL = 2 * 86400.0
"""Seconds a token's binding to its task is kept in Redis (callbacks come while it runs)."""
DONE_TTL = 3600.0
"""Seconds a finished task's binding is kept, to answer late duplicates with 200."""
EARLY_TTL = 600.0
"""Seconds a callback that beat the create's reply waits for the bind."""
_TRUSTED = "t"  # the mark of an early callback to take as Kling's word (before its JSON)
_BIND_RETRY = 0.5  # seconds before a failed bind is tried again (doubling up to the max)
_BIND_RETRY_MAX = 10.0
EARLY_KEPT = 8
"""Early callbacks kept per token (the newest of them applies at the bind)."""
WEBHOOK_ID_TTL = 3600.0
"""Seconds a signed callback's ``webhook-id`` is remembered, to drop Kling's redeliveries."""

_RECEIVE = """
local v = redis.call('HMGET', KEYS[1], 'task', 'alias', 'gw', 'done')
local task, alias, gw, done = v[1], v[2], v[3], v[4]
if not task then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {'early', ''}
end
local ok = ARGV[1] == task
if not ok and gw == '1' then
  if not alias then
    redis.call('HSET', KEYS[1], 'alias', ARGV[1])
    ok = true
  elseif alias == ARGV[1] then
    ok = true
  end
end
if not ok then return {'wrong', task} end
if done == '1' then return {'done', task} end
return {'bound', task}
"""
_BIND = """
redis.call('HSET', KEYS[1], 'task', ARGV[1], 'gw', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local early = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
local alias = redis.call('HGET', KEYS[1], 'alias')
return {alias or '', early}
"""
_DONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'done', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""
_ALIAS = """
if redis.call('HSETNX', KEYS[1], 'alias', ARGV[1]) == 0 then
  return redis.call('HGET', KEYS[1], 'alias')
end
return ARGV[1]
"""


def account_key(account: str, *parts: str) -> str:
    """The Redis key ``cb:<parts>`` of ``account`` (what ``Fleet.key("cb", ...)`` names)."""
    return key_of(account, "cb", *parts)


def agree(task: Task, bound: str, alias: str | None, *, gateway: bool) -> tuple[Task | None, str]:
    """The callback's task under the bound id (or None when the ids disagree), and the alias.

    Through a gateway the body carries Kling's id: the first differing id is taken for
    Kling's (``alias``) and must be the one from then on, as the in-process receiver does.
    """
    if task.task_id == bound:
        return task, alias or ""
    if not gateway:
        return None, alias or ""
    if not alias:
        alias = task.task_id
    if task.task_id != alias:
        return None, alias
    return attrs.evolve(task, task_id=bound), alias


async def _secret(client: aioredis.Redis) -> bytes:
    """The fleet's token secret: made once (SET NX) and read by every process, one round trip."""
    mine = secrets.token_hex(32)
    old = await client.set(SECRET_KEY, mine, nx=True, get=True)
    return bytes.fromhex(text(old) if old is not None else mine)


class FleetReceiver:
    """The receiver's side: checks fleet tokens and records their callbacks in Redis.

    ``fleet`` is a Redis URL (a client made here, closed by `aclose`) or a client (borrowed).
    The secret is read once and cached; `FleetError` comes out of every Redis failure.
    """

    def __init__(self, fleet: str | aioredis.Redis) -> None:
        self._fleet = Fleet(fleet, account=None)  # each token names its account
        client = self._fleet.client
        self._receive = client.register_script(_RECEIVE)
        self._hints = Hints(self._fleet)
        self._secret: bytes | None = None

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the receiver records with."""
        return self._fleet.client

    async def secret(self) -> bytes:
        """The fleet's secret (cached after the first read)."""
        if self._secret is None:
            with self._fleet.guard("reading the callback secret"):
                self._secret = await _secret(self._fleet.client)
        return self._secret

    def known(self, token: str) -> bool:
        """Whether ``token`` may be a fleet token (its MAC checked once the secret is known)."""
        if split_fleet_token(token) is None:
            return False
        return self._secret is None or read_fleet_token((self._secret,), token) is not None

    async def verify(self, token: str) -> tuple[str, str] | None:
        """``(account, nonce)`` of a token made under the fleet's secret, else None."""
        if split_fleet_token(token) is None:
            return None
        return read_fleet_token((await self.secret(),), token)

    async def receive(
        self, account: str, nonce: str, task: Task, *, confirm: bool, webhook_id: str | None = None
    ) -> int:
        """Record one checked callback; the HTTP status (200 taken, 400 another task's). A
        signed one's ``webhook_id`` is noted once it is recorded: a redelivery of it is
        dropped (200)."""
        keys = [account_key(account, "tok", nonce), account_key(account, "early", nonce)]
        # Kept as an early callback if the bind has not come yet: marked as Kling's word
        # (a signed one, or a receiver that trusts bodies) for the bind to take it so.
        early = (_TRUSTED if not confirm else "") + encode_task(task)
        args: list[str | int] = [task.task_id, early, int(EARLY_TTL * 1000), EARLY_KEPT]
        seen = None if webhook_id is None else account_key(account, "wh", webhook_id)
        px = int(WEBHOOK_ID_TTL * 1000)
        with self._fleet.guard("recording a callback"):
            if seen is not None and await self.client.exists(seen):
                return 200  # another worker recorded this delivery already
            kind, bound = (text(part) for part in await self._receive(keys=keys, args=args))
            if kind == "wrong":
                return 400
            if kind == "bound":
                task = attrs.evolve(task, task_id=bound)
                await self._hints.record(account, bound, task, confirm=confirm)
            if seen is not None:
                await self.client.set(seen, "1", px=px)
        return 200

    async def aclose(self) -> None:
        """Close the client if it was made here (a borrowed one is never closed)."""
        await self._fleet.aclose()


@attrs.define(eq=False)
class _FleetBinding:
    """One create's token: its nonce, then its task id."""

    nonce: str
    task_id: str | None = None


class RedisCallbackTokens:
    """One session's callback tokens in a fleet (`CallbackTokens` over Redis).

    Issuing is pure (an HMAC); the bind, a discard and a finished task are written to Redis
    in the background (the protocol's calls do not wait). A bind that fails is logged: the
    task's callbacks are then kept as early ones and lost, and its waits poll at the
    receiver's safety interval. Its hints wake this session's waits from the events stream.
    """

    def __init__(
        self,
        fleet: Fleet,
        secret: bytes,
        *,
        public_url: str,
        watcher: Watcher,
        gateway: bool,
        confirm: bool,
    ) -> None:
        self._fleet = fleet
        self._secret = secret
        self._public_url = public_url
        self._watcher = watcher
        self._gateway = gateway
        self._confirm = confirm
        self._active: set[_FleetBinding] = set()
        self._by_task: dict[str, _FleetBinding] = {}
        self._closed = False
        client = fleet.client
        self._bind_script = client.register_script(_BIND)
        self._done_script = client.register_script(_DONE)
        self._alias_script = client.register_script(_ALIAS)
        self._hints = Hints(fleet)
        assert fleet.account is not None, "a session's link names its account"
        self._account = fleet.account
        watcher.events.finished = self.task_finished

    @classmethod
    async def attach(
        cls,
        fleet: Fleet,
        *,
        public_url: str,
        watcher: Watcher,
        gateway: bool,
        confirm: bool,
    ) -> RedisCallbackTokens:
        """Read the fleet's secret (made by the first worker that needed it)."""
        with fleet.guard("attaching to the callback receiver"):
            secret = await _secret(fleet.client)
        return cls(
            fleet,
            secret,
            public_url=public_url,
            watcher=watcher,
            gateway=gateway,
            confirm=confirm,
        )

    @property
    def open_tokens(self) -> int:
        """Tokens of this session's creates whose tasks are not yet seen finished."""
        return len(self._active)

    def issue(self) -> tuple[_FleetBinding, str]:
        """A fresh token (no Redis round trip): any receiver of the fleet can check it."""
        if self._closed:
            raise RuntimeError("the session's callbacks are closed")
        token = fleet_token(self._secret, self._account, secrets.token_bytes(NONCE_BYTES))
        binding = _FleetBinding(token.split(".")[1])
        self._active.add(binding)
        return binding, f"{self._public_url}/{token}"

    def bind(self, binding: _FleetBinding, task_id: str) -> None:
        """Tie the token to ``task_id`` in Redis; an early callback is recorded then."""
        if self._closed or binding not in self._active:
            return
        binding.task_id = task_id
        self._by_task[task_id] = binding
        self._write(lambda: self._bind_until_written(binding, task_id))

    def discard(self, binding: _FleetBinding) -> None:
        """No task came of the token: forget it (and any early callback it got)."""
        self._active.discard(binding)
        self._write(lambda: self._discard(binding.nonce))

    def task_finished(self, task_id: str) -> None:
        """The task is seen finished: its binding only answers late duplicates from now on."""
        binding = self._by_task.pop(task_id, None)
        if binding is None:
            return
        self._active.discard(binding)
        self._write(lambda: self._done(binding.nonce))

    def close(self) -> None:
        """Forget the tokens here; the bindings in Redis stay for the other processes."""
        self._closed = True
        self._active.clear()
        self._by_task.clear()
        events = self._watcher.events
        if events.finished == self.task_finished:
            events.finished = None

    # -- Redis, in the background --------------------------------------------------------------

    def _key(self, kind: str, nonce: str) -> str:
        return self._fleet.key("cb", kind, nonce)

    def _write(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run one write in the background, until it ends or the fleet closes."""
        if self._fleet.closed:
            return

        async def run() -> None:
            try:
                await work()
            except FleetError as error:
                logger.warning("a callback token's write to the fleet failed: %s", error)

        self._fleet.start(run)

    async def _bind_until_written(self, binding: _FleetBinding, task_id: str) -> None:
        """`_bind`, tried again while Redis is away (every few seconds, for as long as an
        early callback is kept): an unwritten bind loses the task's callbacks."""
        delay, waited = _BIND_RETRY, 0.0
        while True:
            try:
                await self._bind(binding, task_id)
                return
            except FleetUnavailableError as error:
                if binding not in self._active or waited + delay > EARLY_TTL:
                    raise
                logger.info("could not bind a callback token (%s); trying again", error)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, _BIND_RETRY_MAX)

    async def _bind(self, binding: _FleetBinding, task_id: str) -> None:
        keys = [self._key("tok", binding.nonce), self._key("early", binding.nonce)]
        args = [task_id, "1" if self._gateway else "0", int(TOKEN_TTL * 1000)]
        with self._fleet.guard("binding a callback token"):
            alias_raw, early_raw = await self._bind_script(keys=keys, args=args)
            alias = text(alias_raw) or None
            newest: Task | None = None
            trusted = False
            for raw in reversed(early_raw):  # oldest first: the first differing id is Kling's
                entry = text(raw)
                try:
                    task = decode_task(entry.removeprefix(_TRUSTED))
                except ValueError:  # pragma: no cover - the receiver wrote it
                    continue
                if self._gateway and alias is None and task.task_id != task_id:
                    alias = text(await self._alias_script(keys=keys[:1], args=[task.task_id]))
                agreed, _ = agree(task, task_id, alias, gateway=self._gateway)
                if agreed is not None and newer(newest, agreed):
                    newest, trusted = agreed, entry.startswith(_TRUSTED)
            if newest is not None:
                confirm = self._confirm and not trusted
                await self._hints.record(self._account, task_id, newest, confirm=confirm)
        if self._watcher.seen_done(task_id):
            self.task_finished(task_id)

    async def _discard(self, nonce: str) -> None:
        with self._fleet.guard("discarding a callback token"):
            await self._fleet.client.delete(self._key("early", nonce))

    async def _done(self, nonce: str) -> None:
        with self._fleet.guard("retiring a callback token"):
            await self._done_script(keys=[self._key("tok", nonce)], args=[int(DONE_TTL * 1000)])
