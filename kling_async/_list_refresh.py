"""The list refresh driver: reads list pages, single-flight, and folds them into task states.

One list page refreshes every pending task of the session it contains (docs/waiting.md
"Refreshing through the task list"). One refresh is in flight at a time and every due wait
shares it. The rules (which tasks a page refreshed, when to stop, when to give up listing)
are pure, in ``_list_round``; this module only sends, waits and records.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import anyio

from . import _list_round, sansio
from ._policies import PollPolicy
from ._task_state import TaskState
from .errors import KlingError, ListUnavailableError, SessionClosedError
from .models import Task, TaskFamily

if TYPE_CHECKING:
    from ._wire import Wire

__all__ = ["ListRefresh"]

logger = logging.getLogger("kling_async")


class ListRefresh:
    """The list rounds of one session: which ones ran, which is under way, and the mode."""

    def __init__(
        self,
        wire: Wire,
        policy: PollPolicy,
        *,
        mode: bool | None,
        pending: Mapping[str, TaskState],
        fold: Callable[[TaskState, Task], None],
    ) -> None:
        self._wire = wire
        self._policy = policy
        self.mode = mode  # None: try it; False: never (again); True: always (forced)
        self._forced = mode is True
        self._pending = pending  # states someone waits on, not yet done (the watcher's)
        self._fold = fold  # merges a listed task into its state and schedules its next poll
        self._round: anyio.Event | None = None  # set when the round in flight ends
        self._round_wanted: dict[str, TaskState] = {}
        self._rounds = 0
        self._fruitless = 0
        self.requests = 0

    @property
    def active(self) -> bool:
        """Whether due polls go through a list round now."""
        return _list_round.listing(self.mode, len(self._pending))

    def close(self) -> None:
        """Wake whoever waits for the round in flight (they then see the session closed)."""
        if self._round is not None:
            self._round.set()

    async def refresh(self, state: TaskState) -> bool:
        """Refresh through the list (shared with every due wait); True if it found ``state``."""
        for _ in range(2):  # a round already under way may have started without this state
            if state.list_miss or self.mode is False:
                return False
            number = await self.round(state)
            if number is not None:
                return state.listed_in == number
        return False

    async def round(self, state: TaskState | None = None) -> int | None:
        """One refresh of every pending task through the list pages, single-flight.

        Returns the number of the round waited on, or None when it did not cover ``state``
        (a round already under way covers only the tasks pending when it started).
        """
        if self._round is not None:
            number = self._rounds
            covered = state is None or state.task_id in self._round_wanted
            await self._round.wait()
            return number if covered else None
        self._rounds += 1
        number = self._rounds
        done = self._round = anyio.Event()
        self._round_wanted = {task_id: s for task_id, s in self._pending.items() if not s.list_miss}
        try:
            await self._read_pages(dict(self._round_wanted), number)
        finally:
            self._round = None
            self._round_wanted = {}
            done.set()
        return number

    async def _read_pages(self, wanted: dict[str, TaskState], number: int) -> None:
        """Read each family's list for its pending tasks: one list round per family that has
        pending waits (docs/concepts.md, "Task families")."""
        if not wanted:
            return
        families: dict[TaskFamily, dict[str, TaskState]] = {}
        for task_id, state in wanted.items():
            families.setdefault(state.family, {})[task_id] = state
        found = 0
        for family, states in families.items():
            read = await self._read_family(family, states, number)
            if read is None:
                return  # listing is off, or the list failed: the rest are queried
            found += read
        for state in wanted.values():
            if state.listed_in != number:
                state.list_miss = True  # not listed: queried on its own from now on
        ended = _list_round.after_round(found, self._fruitless, forced=self._forced)
        self._fruitless = ended.fruitless
        if ended.stop_listing:
            logger.info("list refresh is off: the list never shows this session's tasks")
            self.mode = False

    async def _read_family(
        self, family: TaskFamily, wanted: dict[str, TaskState], number: int
    ) -> int | None:
        """The list pages of ``family`` until its pending tasks are refreshed (or the rules
        stop); how many were found, or None when listing failed or is off."""
        wire = self._wire
        oldest = min((s.born for s in wanted.values() if s.born is not None), default=None)
        # One cadence for the session: no task is due again before the next round is.
        next_round = wire.clock() + self._policy.list_interval
        found = 0
        for page in range(1, _list_round.MAX_PAGES + 1):
            try:
                self.requests += 1
                tasks = await wire.call(
                    sansio.list_request(wire.base_url, page, _list_round.PAGE_SIZE, family),
                    sansio.parse_task_list,
                )
            except ListUnavailableError as error:
                if not self._forced:
                    logger.info("list refresh is off for this session: %s", error)
                    self.mode = False
                    return None
                raise
            except SessionClosedError:
                raise
            except KlingError as error:
                logger.info("list refresh failed; pending tasks are queried instead: %s", error)
                return None
            verdict = _list_round.read_page(
                page,
                tasks,
                wanted,
                oldest_born=oldest,
                now=wire.clock(),
                server_now=dt.datetime.fromtimestamp(wire.server_time(), dt.timezone.utc),
            )
            for task in verdict.refreshed:
                state = wanted.pop(task.task_id)
                found += 1
                self._fold(state, task)
                state.next_due = max(state.next_due, next_round)
                state.listed_in = number
            if not verdict.more:
                break
        return found
