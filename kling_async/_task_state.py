"""What a session knows of each task id, and the store that holds it.

All handles of a task id in a session share one `TaskState`; the watcher (``_watch``) polls
and waits on it. The store is behind a small protocol, `TaskStates`, so that states shared
by several processes (``_redis_states``) sits beside today's in-process store,
`LocalTaskStates`; it also says whether this process polls (`TaskStates.polling`).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from .errors import KlingError
from .models import Task, TaskFamily

if TYPE_CHECKING:
    import anyio

__all__ = ["LocalTaskStates", "StatesOwner", "TaskState", "TaskStates"]


class TaskState:
    """What a session knows of one task id, when it is polled next, and who is polling it."""

    __slots__ = (
        "__weakref__",
        "born",
        "busy",
        "cap",
        "confirm_due",
        "confirmed_at",
        "family",
        "generation",
        "last",
        "list_miss",
        "listed_in",
        "listeners",
        "next_due",
        "outcome",
        "polls",
        "recorded",
        "replied",
        "sleepers",
        "task_id",
        "waiters",
    )

    def __init__(self, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> None:
        self.task_id = task_id
        self.family = family  # whose routes it is queried and listed on
        self.last: Task | None = None
        # The newest reply of the server. `last` is either this or a hint (a callback's) that
        # moved the status on; the next fresh reply of the hint's status or a later one
        # replaces the hint whatever its clock says, so a hint never outranks the server.
        self.replied: Task | None = None
        self.waiters = 0
        self.next_due = 0.0  # loop time of the next poll a wait makes
        self.born: float | None = None  # loop time the task was made, as far as known
        # The longest time between polls (seconds), or None for the schedule alone: set
        # while something else (a callback receiver) tells of the task's changes.
        self.cap: float | None = None
        # The next poll must be one query, with no list round: a final status was hinted
        # and is confirmed before any wait returns. `confirmed_at`: when the last one began.
        self.confirm_due = False
        self.confirmed_at = -math.inf
        self.polls = 0
        self.busy = False
        self.generation = 0  # polls finished (or cancelled)
        # The last poll that came to an end: its generation and its task or error.
        self.outcome: tuple[int, Task | KlingError] | None = None
        self.list_miss = False
        self.listed_in = 0  # the list refresh that last saw it
        self.recorded = False  # its end was handed to the watcher's `done` event
        self.listeners: list[anyio.Event] | None = None
        # Waits dozing until the next change: bare futures, lighter than an event and a
        # cancel scope each (a thousand pending waits are a thousand of these).
        self.sleepers: list[asyncio.Future[None]] | None = None

    def notify(self) -> None:
        """A change (a poll done, a new state, the session closing): wake whoever waits."""
        sleepers = self.sleepers
        if sleepers:
            self.sleepers = None
            for future in sleepers:
                if not future.done():
                    future.set_result(None)
        if self.listeners:
            for event in self.listeners:
                event.set()

    async def sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Sleep ``seconds`` (> 0, or infinite) on ``loop`` or until `notify` is called."""
        future: asyncio.Future[None] = loop.create_future()
        if self.sleepers is None:
            self.sleepers = [future]
        else:
            self.sleepers.append(future)
        timer = None if math.isinf(seconds) else loop.call_later(seconds, _wake, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            sleepers = self.sleepers
            if sleepers is not None and not future.done():
                sleepers.remove(future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StatesOwner(Protocol):
    """What a task-state store calls back on the watcher whose states it holds."""

    def fold(self, task: Task) -> None:
        """A reply read from the shared store: merge it into its state if one is held."""

    def hint(self, task_id: str, task: Task, *, confirm: bool) -> None:
        """A callback's hint of ``task_id``'s state (see `Watcher.hint`)."""

    async def follow(self, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> None:
        """Wait until ``task_id`` is done, polling it on the usual schedule, on ``family``'s
        routes (unless this process holds its state already: its own handles know it)."""

    def wake(self) -> None:
        """Wake every wait: whether this process polls has changed."""


class TaskStates(Protocol):
    """Where a session keeps its task states: one per task id, alive while someone uses it.

    A store shared by several processes also decides who polls: while `polling` is False
    another process polls for this one's waits, which doze until the store wakes them.
    ``first_look``: seconds a wait on a task this process knows nothing of gives the store
    to bring its state before it polls (0 for a store of this process alone).
    """

    first_look: float

    def get(self, task_id: str) -> TaskState:
        """The state of ``task_id``, made on first use."""

    def find(self, task_id: str) -> TaskState | None:
        """The state of ``task_id`` if one is held, without making one."""

    def __iter__(self) -> Iterator[TaskState]:
        """Every state held."""

    def __len__(self) -> int:
        """How many states are held."""

    def bind(self, owner: StatesOwner) -> None:
        """The watcher these states are of (called once, by the watcher)."""

    @property
    def polling(self) -> bool:
        """Whether this process's waits query Kling themselves now."""

    def recorded(self, task: Task) -> None:
        """A reply this process merged (a new one): share it; never blocks."""

    def watching(self, task_id: str, pending: bool) -> None:
        """Whether a wait of this process is on ``task_id`` and it is not yet done."""


class LocalTaskStates:
    """Task states of this process, held weakly: a state lives while a handle or a wait on
    it does (or its watcher holds it), so that finished creates nobody uses keep no memory."""

    __slots__ = ("_states",)

    first_look = 0.0  # nobody else can know a task this process does not

    def __init__(self) -> None:
        self._states: weakref.WeakValueDictionary[str, TaskState] = weakref.WeakValueDictionary()

    def get(self, task_id: str) -> TaskState:
        """The state of ``task_id``, made on first use."""
        state = self._states.get(task_id)
        if state is None:
            state = TaskState(task_id)
            self._states[task_id] = state
        return state

    def find(self, task_id: str) -> TaskState | None:
        """The state of ``task_id`` if one is held, without making one."""
        return self._states.get(task_id)

    def __iter__(self) -> Iterator[TaskState]:
        """Every state held (a snapshot: states may go while it is read)."""
        return iter(list(self._states.values()))

    def __len__(self) -> int:
        """How many states are held."""
        return len(self._states)

    def bind(self, owner: StatesOwner) -> None:
        """Nothing to call back: this process alone polls its tasks."""

    @property
    def polling(self) -> bool:
        """Always: this process polls its own waits."""
        return True

    def recorded(self, task: Task) -> None:
        """Nobody else to tell."""

    def watching(self, task_id: str, pending: bool) -> None:
        """Nobody else to tell."""
