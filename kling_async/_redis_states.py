"""Task states shared by the fleet through Redis: one poller, every process's waits wake.

A task's state lives at ``task:<id>`` (``<rank>:<updated ms>:<wire JSON>``), merged by a Lua
script that never goes backwards (status rank, then ``updated_at``, as `_schedule.newer`),
then announced on the ``events`` stream (XADD, MAXLEN ~ 10000): state first, the stream is
only a wake-up. One process at a time leads the polling (``_redis_poller``); the others'
waits doze (`RedisTaskStates.polling` is False) and wake from the stream, and every few
seconds re-read the states they wait on, so a lost notification never loses a wake-up.
Interest is the ``watched`` ZSET (task id with its family, ``_task_members``, -> expiry on
Redis's clock), renewed in one call for all of a process's waits. While Redis is away every
process polls for itself, as a single process does, and goes back to following when it
returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ._fleet import Fleet, check_cancelled, text
from ._redis_poller import RedisPoller
from ._redis_task_keys import (
    INTEREST_TTL,
    MAXLEN,
    MERGE,
    READ,
    TaskKeys,
    merge_call,
    stored,
)
from ._task_codec import decode_task, encode_task
from ._task_members import member
from ._task_state import LocalTaskStates, StatesOwner, TaskState
from .models import Task, TaskFamily

__all__ = ["Hints", "RedisTaskStates"]

logger = logging.getLogger("kling_async")

FIRST_LOOK = 1.0
"""Seconds a wait on a task unknown to its process waits for the shared state before a poll
(its maker recorded it, or it finished long ago: a poll would ask what Redis knows)."""
REREAD_EVERY = 10.0
"""Seconds between a process's re-reads of the states its waits are on (the slow cadence)."""
_BLOCK_MS = 1_000  # an XREAD's longest block (under the client's socket timeout)
_RETRY = 1.0  # seconds between tries while Redis is away
_BATCH = 1_000  # tasks per script call (Lua's unpack has a limit near 8,000)


class Hints:
    """Callbacks' news of tasks for the whole fleet (a receiver's, or a session's own)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._merge = fleet.client.register_script(MERGE)

    async def record(self, account: str, task_id: str, task: Task, *, confirm: bool) -> None:
        """``task`` as a callback told of it, for the waits on ``task_id`` of ``account``.

        Without ``confirm`` it is trusted: merged into the shared state (never backwards)
        and announced. With it, only announced (kind ``hint``): every process holding the
        task folds it as `Watcher.hint` does, and the poller confirms a final one with one
        query.
        """
        fleet = self._fleet
        keys = TaskKeys(fleet, account)
        with fleet.guard("recording a callback", key=task_id):
            if not confirm:
                names, args = merge_call(keys, [task], kind="hint", token="")
                await self._merge(keys=names, args=args)
                return
            await fleet.client.xadd(
                keys.events,
                {"kind": "hint", "task": task_id, "data": encode_task(task), "confirm": "1"},
                maxlen=MAXLEN,
                approximate=True,
            )


class RedisTaskStates:
    """`TaskStates` shared through the fleet's Redis (see the module's docstring).

    States are held in this process as `LocalTaskStates` does; what is shared is their
    replies. The background loops (stream, re-reads and interest, the writer, the poller)
    start with the first wait, or with `start`, and end with the fleet.
    """

    first_look = FIRST_LOOK

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._client = fleet.client
        self._keys = TaskKeys(fleet)
        self._local = LocalTaskStates()
        self._owner: StatesOwner | None = None
        self._merge = self._client.register_script(MERGE)
        self._read_script = self._client.register_script(READ)
        self._pending: set[str] = set()  # ids this process waits on, not done
        self._new: set[str] = set()  # of those, the ones not yet announced nor read
        self._tend_due = asyncio.Event()
        self._unwritten: dict[str, Task] = {}  # replies to write, newest per id
        self._write_due = asyncio.Event()
        self._available = True
        self.poller = RedisPoller(fleet, self)
        self._started = False
        self.ops = 0  # Redis round trips made by this store (reported by the benchmarks)

    # -- TaskStates ------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskState:
        """The state of ``task_id``, made on first use (a session that uses one takes part
        in the fleet's polling from then on)."""
        self.start()
        return self._local.get(task_id)

    def find(self, task_id: str) -> TaskState | None:
        """The state of ``task_id`` if one is held."""
        return self._local.find(task_id)

    def __iter__(self) -> Iterator[TaskState]:
        """Every state held."""
        return iter(self._local)

    def __len__(self) -> int:
        """How many states are held."""
        return len(self._local)

    def bind(self, owner: StatesOwner) -> None:
        """The watcher whose waits these states wake and whose polls the poller drives."""
        self._owner = owner

    @property
    def owner(self) -> StatesOwner:
        """The watcher bound to these states."""
        assert self._owner is not None, "RedisTaskStates is used by a Watcher"
        return self._owner

    @property
    def polling(self) -> bool:
        """While this process leads, or Redis is away: its waits query Kling themselves."""
        return self.poller.leading or not self._available

    def recorded(self, task: Task) -> None:
        """Write a new reply through to Redis (soon, in one pipeline with the others)."""
        self._unwritten[task.task_id] = task
        self._write_due.set()
        self.start()

    def watching(self, task_id: str, pending: bool) -> None:
        """Note a wait's interest (announced and read at once) or its end."""
        if pending:
            if task_id not in self._pending:
                self._pending.add(task_id)
                self._new.add(task_id)
                self._tend_due.set()
        else:
            self._pending.discard(task_id)
            self._new.discard(task_id)
        self.start()

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background loops (once, inside the event loop; later calls do nothing)."""
        if self._started:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._started = True
        self._fleet.start(self._read_stream)
        self._fleet.start(self._tend)
        self._fleet.start(self._write)
        self._fleet.start(self.poller.run)

    def reachable(self, available: bool) -> None:
        """Redis answered (True) or failed (False): waits poll for themselves while it is away."""
        if available == self._available:
            return
        was = self.polling
        self._available = available
        if available:
            logger.info("the fleet's Redis is back: waits follow the shared task states")
            self._tend_due.set()  # re-read what changed meanwhile
        else:
            logger.warning("the fleet's Redis is away: waits poll for themselves meanwhile")
        if self.polling != was and self._owner is not None:
            self._owner.wake()

    def wanted(self, task_id: str) -> bool:
        """Whether a wait of this process (not the poller's own) is on ``task_id``."""
        state = self._local.find(task_id)
        if state is None or task_id not in self._pending:
            return False
        return state.waiters > (1 if self.poller.follows(task_id) else 0)

    # -- loops -----------------------------------------------------------------------------

    async def _write(self) -> None:
        """Write the queued replies (one script call per `_BATCH`); keep them for later while
        Redis is away. A background loop of the fleet's: it ends when the session closes."""
        while True:
            await self._write_due.wait()
            self._write_due.clear()
            await asyncio.sleep(0)  # replies merged in the same moment go together
            while self._unwritten:
                batch = dict(list(self._unwritten.items())[:_BATCH])
                for task_id in batch:
                    del self._unwritten[task_id]
                token = self.poller.token or ""
                names, args = merge_call(self._keys, batch.values(), kind="state", token=token)
                try:
                    self.ops += 1
                    _, leads = await self._merge(keys=names, args=args)
                except Exception as error:
                    for task_id, task in batch.items():
                        self._unwritten.setdefault(task_id, task)
                    self.reachable(False)
                    logger.debug("could not write task states: %s", error)
                    await asyncio.sleep(_RETRY)
                    continue
                check_cancelled()
                self.reachable(True)
                if token and not int(leads):
                    self.poller.lost()

    async def _tend(self) -> None:
        """Renew interest and re-read the states waited on: at once for new waits, and for
        all of them every `REREAD_EVERY` seconds (the slow cadence a lost wake-up needs)."""
        loop = asyncio.get_running_loop()
        last_full = -float("inf")
        while True:
            check_cancelled()
            # asyncio.TimeoutError: on Python 3.10 not yet the builtin TimeoutError
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tend_due.wait(), REREAD_EVERY)
            check_cancelled()
            self._tend_due.clear()
            await asyncio.sleep(0)  # waits started together are read together
            full = loop.time() - last_full >= REREAD_EVERY * 0.9 or not self._new
            new, self._new = self._new, set()
            ids = sorted(self._pending) if full else sorted(new)
            # The leader writes what it polls: it reads only what it did not see written.
            read = [i for i in ids if i in new] if self.poller.leading else ids
            try:
                await self._read(read, touch=[i for i in ids if self.wanted(i)])
                check_cancelled()
            except Exception as error:
                self._new.update(i for i in ids if i in self._pending)
                self.reachable(False)
                logger.debug("could not re-read task states: %s", error)
                await asyncio.sleep(_RETRY)
                self._tend_due.set()
                continue
            if full:
                last_full = loop.time()
            self.reachable(True)

    async def _read(self, ids: list[str], *, touch: list[str]) -> None:
        """One round trip: renew interest in ``touch``, read ``ids``' states and fold them."""
        keys = self._keys
        for at in range(0, max(len(ids), len(touch)), _BATCH):
            reading, touching = ids[at : at + _BATCH], touch[at : at + _BATCH]
            if not reading and not touching:
                continue
            self.ops += 1
            values = await self._read_script(
                keys=[keys.watched, *map(keys.task, reading)],
                args=[INTEREST_TTL, *map(self._member, touching)],
            )
            owner = self.owner
            for value in values:
                if value is not None:
                    owner.fold(stored(value))

    def _member(self, task_id: str) -> str:
        """The interest entry of ``task_id``: named with its family, whose routes the leader
        polls it on (an extend's is its bare id, as every version wrote it)."""
        state = self._local.find(task_id)
        return member(task_id, TaskFamily.EXTEND if state is None else state.family)

    async def _read_stream(self) -> None:
        """Wake waits from the events stream (XREAD from the last id seen)."""
        client, events = self._client, self._keys.events
        last: str | None = None
        while True:
            check_cancelled()
            try:
                if last is None:
                    newest: Any = await client.xrevrange(events, count=1)
                    last = text(newest[0][0]) if newest else "0-0"
                    self.ops += 1
                replies: Any = await client.xread({events: last}, count=1000, block=_BLOCK_MS)
                self.ops += 1
                check_cancelled()
            except Exception as error:
                self.reachable(False)
                logger.debug("could not read the task events: %s", error)
                # Go on from the last event seen: a Redis that kept its log keeps the events
                # written since (a hint among them is in no state a re-read would find).
                await asyncio.sleep(_RETRY)
                continue
            self.reachable(True)
            for _, entries in replies:
                for entry_id, fields in entries:
                    last = text(entry_id)
                    self._event(fields)

    def _event(self, raw: dict[Any, Any]) -> None:
        """One event: fold a state (or a trusted hint) or pass a hint to confirm."""
        fields = {text(name): value for name, value in raw.items()}
        task_id = text(fields.get("task", ""))
        state = self._local.find(task_id)
        if state is None:
            return
        try:
            task = decode_task(fields.get("data", ""))
        except ValueError:
            logger.warning("an unreadable task event for %s was skipped", task_id)
            return
        owner = self.owner
        if text(fields.get("kind", "")) == "hint" and text(fields.get("confirm", "")) == "1":
            owner.hint(task_id, task, confirm=True)
        elif state.replied != task:
            owner.fold(task)
