"""The fleet's one poller: a leader lease with a fencing token, and the leader's waits.

One process at a time holds ``leader`` (a token from an INCR counter, with a TTL on Redis's
clock, renewed every second); the others try to take it every second, so a dead leader is
replaced within `LEADER_LEASE` + 1 s. While it leads, its watcher waits in the background on
every task another process waits on (the ``watched`` ZSET) and every task that holds a
parallel-task slot (``slots`` members that are task ids), each on its family's routes (an
entry names its family, ``_task_members``), so its usual schedule and list rounds poll
them; each reply it merges is written through (``_redis_states``). A write or a renewal
that finds another token stops it at once: its waits go back to following.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from ._fleet import check_cancelled, text
from ._redis_gate import BOUND_TTL
from ._task_members import member, read_member
from ._task_state import StatesOwner
from .errors import KlingError, NotFoundError, SessionClosedError
from .models import TaskFamily

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["LEADER_LEASE", "RedisPoller", "named_tasks"]

logger = logging.getLogger("kling_async")

LEADER_LEASE = 3.0
"""Seconds the leader's lease outlives its last renewal."""
RENEW_EVERY = 1.0
"""Seconds between the leader's renewals (and the others' tries to take over)."""
_REMEMBERED_DONE = 10_000  # finished ids the leader does not follow again
_RENEW_SLOTS_EVERY = 10  # rounds between the leader's renewals of its followed tasks' slots
_STOP_WAIT = 1.0  # seconds the poller waits for its background waits to end when it stops

# Take or renew the lease, and while leading, read what to follow: live interest and
# bound slots, and renew the slots of the tasks it follows (seen running: a slot whose
# maker died lives while its task runs). KEYS: leader, fence counter, watched, slots.
# ARGV: the token held ('' for none), lease ms, a slot's TTL ms, ids to renew. Returns
# {token, 1, watched, slots} while (or once) this caller leads, {the leader's token or '',
# 0} otherwise. Times are Redis's own.
_LEAD = """
local current = redis.call('GET', KEYS[1])
local token = current
if current and current ~= ARGV[1] then return {current, 0} end
if current then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  token = tostring(redis.call('INCR', KEYS[2]))
  redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[4], 'XX', 'GT', now + tonumber(ARGV[3]), ARGV[i])
end
return {token, 1, redis.call('ZRANGE', KEYS[3], 0, -1),
  redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf')}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def named_tasks(entries: Iterable[str]) -> dict[str, TaskFamily]:
    """The tasks ``watched`` and ``slots`` entries name, each with its family (an entry
    without one, as earlier versions wrote them, is an extend's). An id named under two
    families (two processes' handles disagree) is polled as the one not an extend."""
    found: dict[str, TaskFamily] = {}
    for entry in entries:
        task_id, family = read_member(entry)
        if found.get(task_id, TaskFamily.EXTEND) is TaskFamily.EXTEND:
            found[task_id] = family
    return found


class Electorate(Protocol):
    """What the poller needs of the shared task states (``_redis_states``)."""

    ops: int

    @property
    def owner(self) -> StatesOwner:
        """The watcher whose waits and polls these are."""

    def reachable(self, available: bool) -> None:
        """Redis answered (True) or failed (False)."""


class RedisPoller:
    """This process's part in the election, and while it leads, its background waits."""

    def __init__(self, fleet: Fleet, states: Electorate) -> None:
        client = fleet.client
        self._states = states
        self._leader = fleet.key("leader")
        self._fence = fleet.key("states", "fence")
        self._watched = fleet.key("watched")
        self._slots = fleet.key("slots")
        self._lead = client.register_script(_LEAD)
        self._release = client.register_script(_RELEASE)
        self._client = client
        self.token: str | None = None  # the fencing token while this process leads
        self._follows: dict[str, asyncio.Task[None]] = {}
        self._families: dict[str, TaskFamily] = {}  # the family of each id followed
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.terms = 0  # how many times this process took the lead
        self._rounds = 0

    @property
    def leading(self) -> bool:
        """Whether this process leads the polling now."""
        return self.token is not None

    def follows(self, task_id: str) -> bool:
        """Whether the leader's background wait is on ``task_id``."""
        return task_id in self._follows

    def lost(self) -> None:
        """Another process leads (a write or a renewal said so): stop at once."""
        if self.token is None:
            return
        logger.info("this process no longer leads the fleet's polling")
        self.token = None
        self._stop_following()
        self._states.owner.wake()

    async def run(self) -> None:
        """Take or renew the lease every `RENEW_EVERY` seconds; while leading, follow."""
        try:
            while True:
                check_cancelled()
                await self._round()
                check_cancelled()
                await asyncio.sleep(RENEW_EVERY)
        finally:
            token, self.token = self.token, None
            stopped = self._stop_following()
            if stopped:  # ended here, not left pending past the session's close
                await asyncio.wait(stopped, timeout=_STOP_WAIT)
            if token is not None:
                with contextlib.suppress(Exception):
                    await self._release(keys=[self._leader], args=[token])

    async def _round(self) -> None:
        states = self._states
        try:
            states.ops += 1
            self._rounds += 1
            renew = (
                [member(i, f) for i, f in self._families.items()]
                if self._rounds % _RENEW_SLOTS_EVERY == 0
                else []
            )
            answer = await self._lead(
                keys=[self._leader, self._fence, self._watched, self._slots],
                args=[self.token or "", int(LEADER_LEASE * 1000), int(BOUND_TTL * 1000), *renew],
            )
        except Exception as error:
            logger.debug("the fleet's poller election failed: %s", error)
            states.reachable(False)
            return  # the lease lapses on its own if Redis is away; a renewal fences us
        states.reachable(True)
        if not int(answer[1]):
            self.lost()
            return
        token, _, watched, slots = answer
        if self.token is None:
            self.token = text(token)
            self.terms += 1
            logger.info("this process leads the fleet's polling (token %s)", self.token)
            states.owner.wake()
        entries = [text(m) for m in watched]
        entries += [m for m in map(text, slots) if not m.startswith("pending:")]
        self._follow(named_tasks(entries))

    def _follow(self, wanted: dict[str, TaskFamily]) -> None:
        """Wait in the background on every wanted id not done, on its family's routes; drop
        the ones no longer wanted."""
        for task_id in list(self._follows):
            if task_id not in wanted:
                self._follows.pop(task_id).cancel()
                self._families.pop(task_id, None)
        owner = self._states.owner
        loop = asyncio.get_running_loop()
        for task_id, family in wanted.items():
            if task_id in self._follows or task_id in self._done:
                continue
            self._families[task_id] = family
            self._follows[task_id] = loop.create_task(self._wait(owner, task_id, family))

    async def _wait(self, owner: StatesOwner, task_id: str, family: TaskFamily) -> None:
        try:
            await owner.follow(task_id, family)
        except SessionClosedError:
            return
        except KlingError as error:  # gone, or the queries failed: told, tried again later
            logger.debug("the poller's wait on %s ended: %s", task_id, error)
            if isinstance(error, NotFoundError):
                self._remember(task_id)
            return
        finally:
            if self._follows.get(task_id) is asyncio.current_task():
                del self._follows[task_id]
                self._families.pop(task_id, None)
        self._remember(task_id)

    def _remember(self, task_id: str) -> None:
        done = self._done
        done[task_id] = None
        if len(done) > _REMEMBERED_DONE:
            done.popitem(last=False)

    def _stop_following(self) -> list[asyncio.Task[None]]:
        follows, self._follows = self._follows, {}
        self._families = {}
        for task in follows.values():
            task.cancel()
        return list(follows.values())
