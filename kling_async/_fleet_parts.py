"""The fleet's parts: the account-wide concerns shared by every session on one Redis.

Each part implements the protocol a single session uses (``_seams.AccountParts``), so that
the drivers never branch on the fleet (``docs/fleet.md``, "What is shared").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._account import LocalSlotGate
from ._fleet import Fleet
from ._redis_journal import RedisJournal
from ._task_state import LocalTaskStates

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ._account import RequestPace, Sleep, SlotGate
    from ._journal import Journal
    from ._task_state import TaskStates

__all__ = ["FleetParts"]


class FleetParts:
    """One session's share of the fleet: its Redis link and the parts built on it."""

    def __init__(self, fleet: str | aioredis.Redis, *, account: str) -> None:
        self.fleet: Fleet | None = Fleet(fleet, account=account)

    @property
    def _link(self) -> Fleet:
        assert self.fleet is not None
        return self.fleet

    def pace(self) -> RequestPace:
        from ._redis_pace import RedisPace

        return RedisPace(self._link)

    def gate(self, sleep: Sleep, *, limit: int | None) -> SlotGate:
        return LocalSlotGate(sleep)

    def states(self) -> TaskStates:
        return LocalTaskStates()

    def journal(self) -> Journal | None:
        return RedisJournal(self._link)

    async def open(self) -> None:
        await self._link.open()

    async def close(self) -> None:
        await self._link.aclose()
