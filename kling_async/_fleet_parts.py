"""The fleet's parts: the account-wide concerns shared by every session on one Redis.

Each part implements the protocol a single session uses (``_seams.AccountParts``), so that
the drivers never branch on the fleet (``docs/fleet.md``, "What is shared").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._fleet import Fleet
from ._redis_gate import RedisSlotGate
from ._redis_journal import RedisJournal
from ._redis_pace import RedisPace
from ._redis_states import RedisTaskStates

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ._account import RequestPace, Sleep, SlotGate
    from ._journal import Journal
    from ._task_state import TaskStates

__all__ = ["FleetParts"]


class FleetParts:
    """One session's share of the fleet: its Redis link and the parts built on it."""

    def __init__(self, fleet: str | aioredis.Redis, *, account: str) -> None:
        self._link = Fleet(fleet, account=account)
        self._pace: RedisPace | None = None
        self._gate: RedisSlotGate | None = None
        self._states: RedisTaskStates | None = None

    @property
    def fleet(self) -> Fleet:
        """The session's link to the fleet's Redis."""
        return self._link

    def pace(self) -> RequestPace:
        self._pace = RedisPace(self._link)
        return self._pace

    def gate(self, sleep: Sleep, *, limit: int | None, hold: float) -> SlotGate:
        self._gate = RedisSlotGate(self._link, sleep, limit=limit, pending_ttl=hold)
        return self._gate

    def states(self) -> TaskStates:
        self._states = RedisTaskStates(self._link)
        return self._states

    def journal(self) -> Journal | None:
        return RedisJournal(self._link)

    async def open(self) -> None:
        await self._link.open()
        if self._pace is not None:
            self._pace.start()  # a cut made before this session's first request reaches it
        if self._states is not None:
            self._states.start()  # takes its turn at leading the account's polling at once

    async def close(self) -> None:
        if self._gate is not None:
            await self._gate.drain()  # before the link stops the loops that would write it
        await self._link.aclose()
