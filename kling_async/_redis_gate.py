"""The fleet's parallel-task gate: one account's slots in a Redis sorted set.

Every session of the fleet takes its creates' slots in ``slots`` (a ZSET): the member is
``pending:<token>`` while a create is in flight and the task's id once the reply names it
(with its family, ``_task_members``: the leader polls it on that family's routes); the
score is when the slot expires, in ms on Redis's clock. A slot goes when any process sees
its task finished (`RedisSlotGate.freed`), when its create made no task, or at its expiry:
the process that holds it renews it while it lives, so expiry only reclaims the slots of a
process that stopped (after ``pending_ttl`` for a create in flight, the longest a create is
on the wire; after ``bound_ttl`` for a task, unless `renew` is told it runs).

The limit is the session's ``max_parallel_tasks`` or, without one, the one learned from the
last 1303 (``limit``, kept ``learned_ttl`` seconds: then it is learned again, so it may grow):
the slots held when it came (tasks made, and creates in flight that may have made one).
While no limit is known, at most `PROBE` creates of the fleet are in flight at once
(``inflight``, a ZSET of their tokens): a burst that meets the limit then costs at most that
many 1303s, not one per create of the burst.
Each decision is one Lua script on Redis's clock. A freed slot is PUBLISHed on
``gate:freed``; waiters also look again every ``recheck`` seconds, so that a lost message
loses no wake-up. Within a process creates pass in the order they came; across processes
whichever asks first after a slot frees takes it (best effort, not a fleet-wide queue).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import anyio

from ._account import CLOSED_WHILE_PENDING, DeadlinePassed, Slot, WaitLine
from ._fleet import text
from ._task_members import lua_variants, member, variants
from .errors import SessionClosedError
from .models import TaskFamily

if TYPE_CHECKING:
    from ._account import Sleep
    from ._fleet import Fleet

__all__ = ["BOUND_TTL", "LEARNED_TTL", "PENDING_TTL", "PROBE", "RECHECK", "RedisSlotGate"]

logger = logging.getLogger("kling_async")

PENDING_TTL = 150.0
"""Seconds a create's slot outlives its process: a create's longest time on the wire (the
default ``connect_timeout + 2 * read_timeout`` is 130 s) and some margin."""
BOUND_TTL = 600.0
"""Seconds a task's slot outlives its process (and the last `RedisSlotGate.renew`)."""
LEARNED_TTL = 3600.0
"""Seconds a limit learned from a 1303 is kept; then it is learned again (and may grow)."""
PROBE = 8
"""Creates the fleet has in flight at most while it knows no limit (the 1303s a burst costs
to learn one)."""
RECHECK = 2.0
"""Seconds between looks at a full gate even when no freed slot was heard of."""
_MAX_QUEUED = 100_000  # writes kept while Redis is away; the oldest go first past it
_BIND_WAIT = 5.0  # seconds a create waits for its slot's binding to be written
_DRAIN_WAIT = 2.0  # seconds a closing session gives its last slot writes

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(ms, key)
  key = key or KEYS[1]
  local pttl = redis.call('PTTL', key)
  if pttl < ms then redis.call('PEXPIRE', key, ms) end
end
local freed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: slots, limit, inflight. ARGV: token, set limit or '', pending ttl ms, channel,
# instance, probe. Returns {taken (0/1), slots held, limit or -1}.
_ACQUIRE = (
    _NOW
    + """
if freed > 0 then redis.call('PUBLISH', ARGV[4], ARGV[5] .. ':' .. freed) end
local limit = tonumber(ARGV[2])
if not limit then limit = tonumber(redis.call('GET', KEYS[2])) end
local held = redis.call('ZCARD', KEYS[1])
if limit and held >= limit then return {0, held, limit} end
local ttl = tonumber(ARGV[3])
if not limit then
  -- No limit known: a few creates in flight at once, so that meeting it costs a few 1303s.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return {0, held, -1} end
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  keep(ttl, KEYS[3])
end
redis.call('ZADD', KEYS[1], now + ttl, 'pending:' .. ARGV[1])
keep(ttl)
return {1, held + 1, limit or -1}
"""
)

# KEYS: slots, limit, inflight. ARGV: bound ttl ms, set limit or '', learned ttl ms,
# channel, instance, then (op, a, b) triples: b token member = bind; r token = release;
# x token = refused (1303); f task = freed (under any family). Returns the slots freed and
# the creates no longer in flight while no limit is known (PUBLISHed: those free a place to probe).
_APPLY = (
    _NOW
    + """
local bound_ttl = tonumber(ARGV[1])
local landed = 0
for i = 6, #ARGV, 3 do
  local op, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op ~= 'f' then landed = landed + redis.call('ZREM', KEYS[3], a) end
  if op == 'b' then
    redis.call('ZREM', KEYS[1], 'pending:' .. a)
    redis.call('ZADD', KEYS[1], now + bound_ttl, b)
    keep(bound_ttl)
  elseif op == 'r' then
    freed = freed + redis.call('ZREM', KEYS[1], 'pending:' .. a)
  elseif op == 'f' then
    freed = freed + redis.call('ZREM', KEYS[1], """
    + lua_variants("a")
    + """)
  elseif op == 'x' then
    redis.call('ZREM', KEYS[1], 'pending:' .. a)
    if ARGV[2] == '' then
      -- The account is full: it runs the tasks known made and not seen finished, and those
      -- of the creates still in flight that made one (a later 1303 among them lowers it).
      redis.call('SET', KEYS[2], math.max(redis.call('ZCARD', KEYS[1]), 1), 'PX', tonumber(ARGV[3]))
    end
  end
end
if freed > 0 or landed > 0 then redis.call('PUBLISH', ARGV[4], ARGV[5] .. ':' .. freed) end
return freed + landed
"""
)

# KEYS: slots. ARGV: ttl ms, members... Pushes each member's expiry to now + ttl (never
# back, never re-adding one that is gone); returns the members that are gone.
_RENEW = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'GT', 'CH', now + ttl, ARGV[i]) == 0 then
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then table.insert(gone, ARGV[i]) end
  end
end
keep(ttl)
return gone
"""
)


class _Turn:
    """One create waiting for a slot in this process: ``event`` is set when it should look."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = anyio.Event()


class RedisSlotGate:
    """The account's slot gate shared by every session on one Redis (see the module)."""

    def __init__(
        self,
        fleet: Fleet,
        sleep: Sleep,
        *,
        limit: int | None = None,
        pending_ttl: float | None = None,
        bound_ttl: float | None = None,
        learned_ttl: float | None = None,
        recheck: float | None = None,
    ) -> None:
        pending_ttl = PENDING_TTL if pending_ttl is None else pending_ttl
        bound_ttl = BOUND_TTL if bound_ttl is None else bound_ttl
        learned_ttl = LEARNED_TTL if learned_ttl is None else learned_ttl
        recheck = RECHECK if recheck is None else recheck
        self._fleet = fleet
        self._sleep = sleep
        self._limit = limit
        self._pending_ms = int(pending_ttl * 1000)
        self._bound_ms = int(bound_ttl * 1000)
        self._learned_ms = int(learned_ttl * 1000)
        self._recheck = recheck
        self._renew_every = max(0.05, min(10.0, pending_ttl / 4, bound_ttl / 4))
        self._keys = [fleet.key("slots"), fleet.key("limit"), fleet.key("inflight")]
        self._channel = fleet.key("gate", "freed")
        client = fleet.client
        self._acquire = client.register_script(_ACQUIRE)
        self._apply = client.register_script(_APPLY)
        self._renew = client.register_script(_RENEW)
        self._line = WaitLine(sleep)
        self._turns: collections.deque[_Turn] = collections.deque()
        self._ops: collections.deque[tuple[str, str, str]] = collections.deque()
        self._flushes: list[asyncio.Future[None]] = []
        self._written = asyncio.Event()  # set when writes are queued
        self._flushing = asyncio.Lock()  # one batch at a time: each takes the queue's head
        self._pending: set[str] = set()  # members of this process's creates in flight
        self._bound: set[str] = set()  # tasks this process made (bound in Redis), not finished
        self._started = False
        self._closed = False
        self.round_trips = 0  # scripts run (each one round trip), for the benchmarks

    # -- the protocol -------------------------------------------------------------------------

    async def acquire(self, deadline: float | None) -> Slot:
        self._start()
        if self._closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        slot = Slot(secrets.token_hex(8), counted=True)
        if not self._turns and await self._take(slot):
            return slot
        turn = _Turn()
        self._turns.append(turn)
        try:
            while True:
                if self._closed:
                    raise SessionClosedError(CLOSED_WHILE_PENDING)
                if self._turns[0] is turn:
                    turn.event = anyio.Event()
                    if await self._take(slot):
                        return slot
                    wait = self._recheck
                else:
                    wait = math.inf
                if deadline is not None:
                    left = deadline - anyio.current_time()
                    if left <= 0:
                        raise DeadlinePassed
                    wait = min(wait, left)
                await self._sleep(wait, turn.event)
        finally:
            head = self._turns[0] is turn
            self._turns.remove(turn)
            if head:
                self._poke()  # the next in line looks now (more slots may be free)

    async def bind(self, slot: Slot, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> None:
        if slot.settled:
            return
        slot.settled = True
        self._pending.discard(_pending(slot))
        # The member names the family: the leader polls the task on its routes.
        self._queue("b", slot.token, member(task_id, family))  # renewed once written (`_flush`)
        if self._fleet.closed:
            return
        flushed = asyncio.get_running_loop().create_future()
        self._flushes.append(flushed)
        # Written before the create returns (so before anyone can see the task finish); if
        # Redis is away, written when it is back.
        with anyio.move_on_after(_BIND_WAIT):
            await flushed

    def release(self, slot: Slot) -> None:
        if not slot.settled:
            slot.settled = True
            self._pending.discard(_pending(slot))
            self._queue("r", slot.token)

    def refused(self, slot: Slot) -> None:
        if not slot.settled:
            slot.settled = True
            self._pending.discard(_pending(slot))
            self._queue("x", slot.token)

    def doubt(self, slot: Slot) -> None:
        if not slot.settled:
            slot.settled = True
            self._pending.discard(_pending(slot))  # not renewed: it expires at its time

    def freed(self, task_id: str, running: bool = True) -> None:
        self._bound.difference_update(variants(task_id))
        self._queue("f", task_id)
        if running:
            self._line.wake(1)

    async def renew(self, task_ids: Collection[str]) -> None:
        if task_ids:
            with self._fleet.guard("renewing parallel-task slots"):
                self.round_trips += 1
                members = [entry for task_id in task_ids for entry in variants(task_id)]
                await self._renew(keys=self._keys[:1], args=[self._bound_ms, *members])

    async def wait(self, delay: float) -> None:
        self._start()
        await self._line.wait(delay)

    def close(self) -> None:
        self._closed = True
        self._line.close()
        for turn in self._turns:
            turn.event.set()

    # -- Redis --------------------------------------------------------------------------------

    async def _take(self, slot: Slot) -> bool:
        """One try at a slot: True when ``slot`` is now held; FleetUnavailableError when
        Redis does not answer (a try cancelled on the way is given back)."""
        limit = "" if self._limit is None else str(self._limit)
        member = _pending(slot)
        try:
            with self._fleet.guard("taking a parallel-task slot"):
                self.round_trips += 1
                reply: Any = await self._acquire(
                    keys=self._keys,
                    args=[
                        slot.token,
                        limit,
                        self._pending_ms,
                        self._channel,
                        self._instance,
                        PROBE,
                    ],
                )
        except BaseException:
            self._queue("r", slot.token)  # it may have been taken before the failure
            raise
        if int(reply[0]) != 1:
            return False
        self._pending.add(member)
        return True

    @property
    def _instance(self) -> str:
        return self._fleet.instance

    def _queue(self, op: str, a: str, b: str = "") -> None:
        if len(self._ops) >= _MAX_QUEUED:
            self._ops.popleft()
            logger.warning("the fleet's Redis is away: a parallel-task slot write was dropped")
        self._ops.append((op, a, b))
        self._written.set()
        self._start()

    def _start(self) -> None:
        if self._started or self._fleet.closed:
            return
        self._started = True
        self._fleet.start(self._write_loop)
        self._fleet.start(self._renew_loop)
        self._fleet.start(lambda: self._fleet.listen(self._channel, self._heard))

    async def _write_loop(self) -> None:
        """Write the queued slot changes, in order, a batch per script."""
        try:
            while True:
                await self._written.wait()
                self._written.clear()
                if not await self._flush():
                    await asyncio.sleep(1.0)  # Redis away: the writes wait for it
        finally:
            for flushed in self._flushes:  # the session closed (`drain` wrote what it could)
                if not flushed.done():
                    flushed.set_result(None)

    async def drain(self) -> None:
        """The session closes: write what is queued (a bound slot, a freed one), within 2 s,
        before the fleet stops its loops."""
        with anyio.move_on_after(_DRAIN_WAIT):
            await self._flush()

    async def _flush(self) -> bool:
        async with self._flushing:
            return await self._flush_queued()

    async def _flush_queued(self) -> bool:
        ops = list(self._ops)
        flushes, self._flushes = self._flushes, []
        ok = True
        if ops:
            args: list[str | int] = [
                self._bound_ms,
                "" if self._limit is None else str(self._limit),
                self._learned_ms,
                self._channel,
                self._instance,
            ]
            for queued in ops:
                args.extend(queued)
            try:
                self.round_trips += 1
                freed = await self._apply(keys=self._keys, args=args)
            except Exception as error:
                logger.warning("could not write parallel-task slots to the fleet: %s", error)
                self._written.set()
                ok = False
            else:
                for kind, a, b in ops:
                    self._ops.popleft()
                    # Renewed from now on: a renewal before the bind was written would
                    # find no such slot and stop renewing it.
                    if kind == "b":
                        self._bound.add(b)
                    elif kind == "f":
                        self._bound.difference_update(variants(a))
                if int(freed) > 0:
                    self._poke()  # this process's first in line may take one now
        for flushed in flushes:
            if not flushed.done():
                flushed.set_result(None)
        return ok

    async def _renew_loop(self) -> None:
        """Keep this process's slots alive while it lives; forget tasks freed elsewhere."""
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                held = ((self._pending, self._pending_ms), (self._bound, self._bound_ms))
                for members, ms in held:
                    if members:
                        self.round_trips += 1
                        gone = await self._renew(keys=self._keys[:1], args=[ms, *members])
                        for member in gone:
                            members.discard(text(member))
            except Exception as error:
                logger.warning("could not renew parallel-task slots: %s", error)

    def _heard(self, data: str) -> None:
        """Another process freed slots (or, with no limit known, ended creates in flight):
        wake this process's waiters."""
        instance, _, count = data.rpartition(":")
        if instance == self._instance:
            return  # this process woke its own waiters when it freed them
        freed = int(count) if count.isdigit() else 1
        if freed:
            self._line.wake(freed)
        self._poke()

    def _poke(self) -> None:
        if self._turns:
            self._turns[0].event.set()


def _pending(slot: Slot) -> str:
    return f"pending:{slot.token}"
