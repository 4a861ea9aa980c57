"""The poll scheduler: one state and one schedule per task id, shared by every wait on it.

All handles of a task id in a session share one `TaskState`. Waits take turns doing its poll
(Go's singleflight, without a background task): at most one query per task id is in flight,
concurrent `poll()` calls share it, and whoever leads a poll may be cancelled without
stalling the others (the next waiter takes over). Where the base URL offers the task list, one
list page refreshes every pending task it contains (api.md "List refresh"); the schedule
polls densely only where completions are expected and learns that from tasks it saw finish.
State a handle has seen never goes backwards (`newer`).

Callbacks (``callbacks``) are hints fed in through `Watcher.hint`: a status on the way moves
the state on until the next reply replaces it; a final one (with confirmation on) only makes
the task's poll due now, so the waits themselves confirm it with one query, and when nobody
waits its token is retired at once, so that finished creates hold no memory. A task whose
callbacks come to a receiver is polled on the slow safety cadence only (``TaskState.safety``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import math
import random
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import attrs

from . import sansio
from ._policies import PollPolicy
from .errors import (
    KlingError,
    ListUnavailableError,
    NotFoundError,
    SessionClosedError,
    WaitTimeoutError,
)
from .models import Task, TaskResult, TaskStatus

if TYPE_CHECKING:
    from ._wire import Wire

__all__ = ["Schedule", "TaskState", "Watcher", "newer"]

logger = logging.getLogger("kling_async")

_LIST_PAGE_SIZE = 500  # api.md: pageSize up to 500
_LIST_MAX_PAGES = 20  # a refresh reads at most 10,000 tasks; the rest are queried on their own
_LIST_MIN_PENDING = 2  # one pending task is as cheap to query as to list
_FRUITLESS_ROUNDS = 3  # list pages that show none of our tasks this often: stop listing
_REMEMBERED_RUNNING = 10_000
_SAMPLES = 64  # durations of finished tasks the schedule learns from
_STEP_SLACK = 0.05  # as_completed: seconds by which a poll may come early to join a step
_RANK = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}
_CLOSED = "the session was closed while this call was pending"
# A final callback asks for a confirming query at most this often per task: forged ones
# that repeat cannot turn a token into a stream of queries.
_CONFIRM_SPACING = 0.25


def newer(old: Task | None, new: Task) -> bool:
    """Whether ``new`` may replace ``old`` as the state seen: never a step back.

    The status order decides (submitted < processing and unknown statuses < done); within
    one rank the later ``updated_at`` wins, so a reply that was overtaken on the wire is not
    taken for news. A finished task stays finished.
    """
    if old is None:
        return True
    old_rank, new_rank = _rank(old.status), _rank(new.status)
    if new_rank != old_rank:
        return new_rank > old_rank
    if old.updated_at is None or new.updated_at is None:
        return not old.done  # no clock to compare: a finished state is kept
    return new.updated_at >= old.updated_at


def _rank(status: TaskStatus) -> int:
    return _RANK.get(status.value, 1)  # api.md: an unknown status is "not finished"


class TaskState:
    """What a session knows of one task id, and who is polling it."""

    __slots__ = (
        "__weakref__",
        "born",
        "busy",
        "confirm_wanted",
        "confirmed_at",
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
        "retire",
        "safety",
        "sleepers",
        "task_id",
        "waiters",
    )

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.last: Task | None = None
        # The newest reply of the server. `last` is either this or a callback's hint that
        # moved the status on; the next fresh reply of the hint's status or a later one
        # replaces the hint whatever its clock says, so a callback never outranks the server.
        self.replied: Task | None = None
        self.waiters = 0
        self.next_due = 0.0  # loop time of the next poll a wait makes
        self.born: float | None = None  # loop time the task was made, as far as known
        self.polls = 0
        self.busy = False
        self.generation = 0  # polls finished (or cancelled)
        # The last poll that came to an end: its generation and its task or error.
        self.outcome: tuple[int, Task | KlingError] | None = None
        self.list_miss = False
        self.listed_in = 0  # the list refresh that last saw it
        self.recorded = False  # its end was handed to `Watcher.on_done`
        # Callbacks: the safety cadence (seconds) when they come to a receiver, else None;
        # a final callback waiting for its confirming query; when the last confirm was led;
        # told once when the task is seen done (the receiver retires its token).
        self.safety: float | None = None
        self.confirm_wanted = False
        self.confirmed_at = -math.inf
        self.retire: Callable[[], None] | None = None
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


class Schedule:
    """When to poll a task next: densely where completions are expected, sparsely elsewhere.

    Without knowledge the policy's ``min_duration``..``max_duration`` is the window where a
    task may finish; once a few tasks were seen to succeed, their durations replace it.
    Before the window polls space out from ``first_delay`` by ``growth`` (a task may fail
    early); past it they space out up to ``max_delay``.
    """

    __slots__ = ("_policy", "_samples")

    def __init__(self, policy: PollPolicy) -> None:
        self._policy = policy
        self._samples: list[float] = []

    def observe(self, seconds: float) -> None:
        """A task took ``seconds`` from creation to success."""
        if not self._policy.learn or not math.isfinite(seconds) or seconds < 0:
            return
        samples = self._samples
        samples.append(seconds)
        if len(samples) > _SAMPLES:
            del samples[0]

    def window(self) -> tuple[float, float]:
        """Where completions are expected, in seconds of a task's age."""
        policy = self._policy
        if len(self._samples) >= 3:
            # The first successes of a batch are its fastest tasks: they tell where the window
            # starts, not where it ends, so the policy's end stays unless they show a later one.
            low, high = min(self._samples), max(self._samples)
            start = max(0.0, low * 0.9 - policy.interval)
            return start, max(high * 1.25, policy.max_duration, start + policy.interval)
        return policy.min_duration, policy.max_duration

    def delay(self, age: float, *, listed: bool, rng: random.Random) -> float:
        """Seconds until the next poll of a task ``age`` seconds old."""
        policy = self._policy
        interval = policy.list_interval if listed else policy.interval
        start, end = self.window()
        if age < start:
            # Early polls land on (or just after) their points, never just before one: a poll
            # a moment early would be followed by another a moment later.
            delay = _next_early(policy.first_delay, policy.growth, age, start) - age
            return delay * (1 + policy.jitter * rng.random())
        if age < end:
            delay = interval
        else:  # overdue: polls space out by a tenth of the time past the window
            delay = max(interval, min(policy.max_delay, interval + (age - end) / 10))
        if listed:
            return delay  # list refreshes are session-wide: nothing to spread
        return max(0.0, delay * (1 - policy.jitter * rng.random()))


class Watcher:
    """The task states of one session and the polls, list refreshes and waits on them."""

    def __init__(
        self,
        wire: Wire,
        policy: PollPolicy,
        *,
        list_refresh: bool | None,
        on_finished: Callable[[], None],
    ) -> None:
        self._wire = wire
        self.policy = policy
        self.schedule = Schedule(policy)
        self._on_finished = on_finished
        self._states: weakref.WeakValueDictionary[str, TaskState] = weakref.WeakValueDictionary()
        self._pending: dict[str, TaskState] = {}  # states someone waits on, not yet done
        # Ids seen not done, to notice them finish (an OrderedDict: see Creator._known).
        self._running: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.list_mode: bool | None = list_refresh  # None: try it; False: never (again)
        self._forced = list_refresh is True
        self._round: anyio.Event | None = None  # set when the list refresh in flight ends
        self._round_wanted: dict[str, TaskState] = {}
        self._rounds = 0
        self._fruitless = 0
        self.waits = 0
        self.list_requests = 0
        # Told once of each task a wait saw finish (the session's journal records it).
        self.on_done: Callable[[Task], Awaitable[None]] | None = None
        # Told when a query answers that the task does not exist (404/1203); must not raise.
        self.on_gone: Callable[[str, KlingError], Awaitable[None]] | None = None

    # -- states -----------------------------------------------------------------------------

    def state(self, task_id: str) -> TaskState:
        """The shared state of ``task_id`` in this session (made on first use)."""
        state = self._states.get(task_id)
        if state is None:
            state = TaskState(task_id)
            self._states[task_id] = state
        return state

    def created(self, task: Task, *, safety: float | None = None) -> TaskState:
        """A task this session just made: its state, first poll scheduled by its age.

        ``safety``: its callbacks come to a receiver; poll it only every ``safety`` seconds.
        """
        state = self.state(task.task_id)
        state.born = self._wire.clock()
        if safety is not None:
            state.safety = safety
        self._merge(state, task)
        self._reschedule(state, listed=False)
        return state

    def hint(self, state: TaskState, task: Task, *, confirm: bool) -> None:
        """A callback's task for ``state`` (its id already checked): a hint, never the truth.

        A status on the way is merged (never backwards) as a hint: the next reply of that
        status or later replaces it, and with ``confirm`` it carries no result. A final one is
        merged only without ``confirm``; with it, the task's poll becomes due now and its
        waits wake, so that one of them confirms with a query before any returns. When no
        wait is on the task, its token is retired at once (`_let_go`). Nothing here awaits
        or queries.
        """
        if self._wire.closed:
            return
        last = state.last
        if last is not None and last.done:
            return  # already seen finished: a duplicate or a late one changes nothing
        if not task.done:
            if confirm and (task.result.videos or task.final_unit_deduction is not None):
                task = attrs.evolve(task, result=TaskResult(), final_unit_deduction=None)
            self._merge(state, task, hinted=True)
            return
        if not confirm:
            self._merge(state, task)  # trusted: the receiver is reached by Kling alone
            return
        state.confirm_wanted = True
        if state.waiters == 0:
            self._let_go(state)
        if state.busy:
            return  # the poll in flight may predate the callback: `_lead` confirms after it
        due = max(self._wire.clock(), state.confirmed_at + _CONFIRM_SPACING)
        if due < state.next_due:
            state.next_due = due
        state.notify()

    def _let_go(self, state: TaskState) -> None:
        """A final callback for a task nobody waits on: keep nothing for it but its handles.

        The receiver retires its token (later callbacks get 200 and change nothing), the
        state lives on only while a handle holds it, and its id stops counting as running
        (a freed slot wakes a create waiting for one). A wait that comes later confirms
        with one query at once and then polls on the usual schedule.
        """
        state.safety = None
        retire, state.retire = state.retire, None
        if retire is not None:
            retire()
        running = self._running
        if state.task_id in running:
            del running[state.task_id]
            self._on_finished()

    @property
    def tracked(self) -> int:
        """Task states held: a live handle or wait, or a token's open create, keeps one."""
        return len(self._states)

    def close(self) -> None:
        """Wake every wait (each then sees the session closed and raises)."""
        for state in list(self._states.values()):
            state.notify()
        if self._round is not None:
            self._round.set()

    # -- one query --------------------------------------------------------------------------

    async def query(self, task_id: str) -> Task:
        """Query one task (with the query retries) and fold it into its shared state."""
        wire = self._wire
        task = await wire.call(
            sansio.query_request(wire.base_url, task_id),
            lambda response, now: sansio.parse_task(response, now, task_id=task_id),
        )
        state = self._states.get(task_id)
        if state is None and task.task_id != task_id:
            state = self._states.get(task.task_id)
        if state is not None:
            return self._merge(state, task)
        self._saw(task)
        return task

    async def poll(self, state: TaskState) -> Task:
        """Query now, sharing a query already in flight for this task."""
        self._wire.check_open()
        while state.busy:
            generation = state.generation
            await self._doze(state, math.inf)
            outcome = _outcome(state, generation)
            if outcome is not None:
                return outcome
        return await self._lead(state)

    async def _lead(self, state: TaskState, listed: bool = False) -> Task:
        """Do this state's poll for everyone waiting on it."""
        state.busy = True
        confirming = state.confirm_wanted
        if confirming:
            state.confirm_wanted = False
            state.confirmed_at = self._wire.clock()
            listed = False  # a confirm is one query: it must not wait for a list round
        answered = False
        try:
            if listed and await self._refresh_by_list(state):
                task = state.last
                assert task is not None
            else:
                task = await self.query(state.task_id)
                answered = True
                state.polls += 1
                self._reschedule(state, listed=False, confirmed=confirming)
            if state.confirm_wanted and not task.done:
                # A final callback came while this poll was in flight: confirm it next.
                due = max(self._wire.clock(), state.confirmed_at + _CONFIRM_SPACING)
                state.next_due = min(state.next_due, due)
        except KlingError as error:
            state.outcome = (state.generation + 1, error)
            if isinstance(error, NotFoundError) and self.on_gone is not None:
                await self.on_gone(state.task_id, error)
            raise
        else:
            state.outcome = (state.generation + 1, task)
            return task
        finally:
            if confirming and not answered:
                state.confirm_wanted = True  # failed or cancelled: the next poll confirms
            state.busy = False
            state.generation += 1
            state.notify()

    def _merge(self, state: TaskState, task: Task, *, hinted: bool = False) -> Task:
        """Fold a reply (or a callback's hint) into the shared state; return the state now
        seen (never older). A reply replaces a hint of its status or an earlier one whatever
        their clocks say: a callback's ``updated_at`` cannot make genuine replies look stale."""
        old = state.last
        if hinted:
            take = newer(old, task)
        else:
            replied = state.replied
            take = newer(replied, task)
            if take:
                state.replied = task
                if old is not None and old is not replied:  # the state shows a hint
                    take = _rank(task.status) >= _rank(old.status)
        if take:
            state.last = task
            if state.born is None and not hinted:
                state.born = self._born(task)
            self._saw(task)
            if old is None or old.status != task.status:
                state.notify()
            if task.done:
                self._pending.pop(state.task_id, None)
                state.confirm_wanted = False
                retire, state.retire = state.retire, None
                if retire is not None:
                    retire()
        return state.last  # type: ignore[return-value]  # set above or before

    def _saw(self, task: Task) -> None:
        """Notice tasks that finish: one seen running, now done, frees a parallel-task slot."""
        running = self._running
        if not task.done:
            running[task.task_id] = None
            if len(running) > _REMEMBERED_RUNNING:
                running.popitem(last=False)
            return
        if task.task_id in running:
            del running[task.task_id]
            self._on_finished()
            if task.status is TaskStatus.SUCCEED and task.created_at and task.updated_at:
                self.schedule.observe((task.updated_at - task.created_at).total_seconds())

    def _server_now(self) -> dt.datetime:
        """Now on the server's clock, which a task's ``created_at`` is on."""
        return dt.datetime.fromtimestamp(self._wire.server_time(), dt.timezone.utc)

    def _born(self, task: Task) -> float:
        now = self._wire.clock()
        if task.created_at is None:
            return now
        age = (self._server_now() - task.created_at).total_seconds()
        return now - max(0.0, age)

    def _reschedule(self, state: TaskState, *, listed: bool, confirmed: bool = False) -> None:
        now = self._wire.clock()
        age = now - (state.born if state.born is not None else now)
        delay = self.schedule.delay(age, listed=listed, rng=self._wire.rng)
        safety = state.safety
        if safety is not None:
            # Callbacks tell of changes: polls are only the safety net for lost ones. After
            # a confirm that did not show the task done (a forged callback, or a query that
            # lags behind it), the usual schedule checks once more, then the safety net again.
            jittered = safety * (1 - self.policy.jitter * self._wire.rng.random())
            delay = min(delay, jittered) if confirmed else jittered
        state.next_due = now + delay

    # -- waiting ----------------------------------------------------------------------------

    async def wait(
        self, state: TaskState, condition: Callable[[Task], bool], timeout: float | None
    ) -> Task:
        """Return the state once ``condition`` holds; poll when due, or let another poll."""
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        last = state.last
        if last is not None and condition(last):
            await self._finished(state)
            return last
        wire = self._wire
        wire.check_open()
        self.waits += 1
        self._interest(state, +1)
        try:
            with anyio.move_on_after(timeout) if timeout is not None else _NO_SCOPE:
                # One turn of the loop first: waits started together (a gather) all count as
                # pending before the first of them polls, so they can share a list page.
                await anyio.lowlevel.checkpoint()
                while True:
                    last = state.last
                    if last is not None and condition(last):
                        await self._finished(state)
                        return last
                    await self._step(state)
        finally:
            self.waits -= 1
            self._interest(state, -1)
        raise WaitTimeoutError(state.task_id, timeout=timeout or 0.0, last=state.last)

    async def _step(self, state: TaskState) -> None:
        """Lead the poll if it is due and nobody else does; else doze until something moves."""
        now = self._wire.clock()
        if state.busy or now < state.next_due:
            generation = state.generation
            await self._doze(state, state.next_due - now if not state.busy else math.inf)
            _outcome(state, generation)  # the poll this wait dozed through failed: so does it
            return
        await self._lead(state, self._listing() and not state.confirm_wanted)

    async def _doze(self, state: TaskState, seconds: float) -> None:
        """Sleep ``seconds`` or until the state changes (closing the session changes it)."""
        wire = self._wire
        if wire.closed:
            raise SessionClosedError(_CLOSED)
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
        else:
            loop = wire.loop
            future: asyncio.Future[None] = loop.create_future()
            if state.sleepers is None:
                state.sleepers = [future]
            else:
                state.sleepers.append(future)
            timer = None if math.isinf(seconds) else loop.call_later(seconds, _wake, future)
            try:
                await future
            finally:
                if timer is not None:
                    timer.cancel()
                sleepers = state.sleepers
                if sleepers is not None and not future.done():
                    sleepers.remove(future)
        if wire.closed:
            raise SessionClosedError(_CLOSED)

    def _interest(self, state: TaskState, change: int) -> None:
        state.waiters += change
        if state.waiters > 0 and not (state.last is not None and state.last.done):
            self._pending[state.task_id] = state
        else:
            self._pending.pop(state.task_id, None)

    async def as_completed(
        self, states: Iterable[TaskState], timeout: float | None
    ) -> AsyncGenerator[Task, None]:
        """Yield each task once it is done, in the order it finished (see KlingSession)."""
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        wire = self._wire
        unique = list(dict.fromkeys(states))
        wire.check_open()
        deadline = math.inf if timeout is None else wire.clock() + timeout
        waiting: list[TaskState] = []
        for state in unique:
            if state.last is not None and state.last.done:
                await self._finished(state)
                yield state.last
            else:
                waiting.append(state)
        if not waiting:
            return
        moved = anyio.Event()
        for state in waiting:
            if state.listeners is None:
                state.listeners = []
            state.listeners.append(moved)
            self._interest(state, +1)
        self.waits += 1
        try:
            while waiting:
                finished = [s for s in waiting if s.last is not None and s.last.done]
                if finished:
                    finished.sort(key=_finish_order)
                    for state in finished:
                        waiting.remove(state)
                        self._forget(state, moved)
                    for state in finished:
                        assert state.last is not None
                        await self._finished(state)
                        yield state.last
                    continue
                now = wire.clock()
                if now >= deadline:
                    raise WaitTimeoutError(
                        None, timeout=timeout or 0.0, last=None, pending=_ids(waiting)
                    )
                idle = [s for s in waiting if not s.busy]
                # Polls due within the next moment go now too: fewer, fuller steps.
                due = [s for s in idle if s.next_due <= now + _STEP_SLACK]
                if due:
                    with anyio.move_on_after(deadline - now):
                        await self._lead_many(due)
                    continue
                if moved.is_set():
                    moved = self._renew(waiting, moved)
                    continue
                soonest = min((s.next_due for s in idle), default=math.inf)
                with anyio.move_on_after(min(soonest, deadline) - now):
                    await moved.wait()
                if wire.closed:
                    raise SessionClosedError(_CLOSED)
        finally:
            self.waits -= 1
            for state in waiting:
                self._forget(state, moved)

    async def _finished(self, state: TaskState) -> None:
        """Hand a finished task to `on_done`, once per task id."""
        if self.on_done is None or state.recorded:
            return
        last = state.last
        if last is not None and last.done:
            state.recorded = True
            await self.on_done(last)

    def _forget(self, state: TaskState, moved: anyio.Event) -> None:
        if state.listeners is not None and moved in state.listeners:
            state.listeners.remove(moved)
            if not state.listeners:
                state.listeners = None
            self._interest(state, -1)

    def _renew(self, waiting: list[TaskState], moved: anyio.Event) -> anyio.Event:
        fresh = anyio.Event()
        for state in waiting:
            listeners = state.listeners
            if listeners is not None:
                listeners[listeners.index(moved)] = fresh
        return fresh

    async def _lead_many(self, due: list[TaskState]) -> None:
        """Poll every due task: one list refresh where it serves, else queries side by side.

        Confirms of final callbacks go first, as queries of their own, without a list round.
        """
        confirms = [s for s in due if s.confirm_wanted]
        if confirms:
            due = confirms
        elif self._listing() and due:
            number = await self._list_round()
            due = [s for s in due if not s.busy and s.listed_in != number]  # not refreshed
        if not due:
            return
        if len(due) == 1:
            await self._lead(due[0])
            return
        errors: list[KlingError] = []

        async def lead(state: TaskState) -> None:
            try:
                await self._lead(state)
            except KlingError as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for state in due:
                group.start_soon(lead, state)
        if errors:
            raise errors[0]

    # -- list refresh -----------------------------------------------------------------------

    def _listing(self) -> bool:
        return self.list_mode is not False and len(self._pending) >= _LIST_MIN_PENDING

    async def _refresh_by_list(self, state: TaskState) -> bool:
        """Refresh through the list (shared with every due wait); True if it found ``state``."""
        for _ in range(2):  # a round already under way may have started without this state
            if state.list_miss or self.list_mode is False:
                return False
            number = await self._list_round(state)
            if number is not None:
                return state.listed_in == number
        return False

    async def _list_round(self, state: TaskState | None = None) -> int | None:
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
        wire = self._wire
        if not wanted:
            return
        oldest = min((s.born for s in wanted.values() if s.born is not None), default=None)
        # One cadence for the session: no task is due again before the next round is.
        next_round = wire.clock() + self.policy.list_interval
        found = 0
        for page in range(1, _LIST_MAX_PAGES + 1):
            try:
                self.list_requests += 1
                tasks = await wire.call(
                    sansio.list_request(wire.base_url, page, _LIST_PAGE_SIZE),
                    sansio.parse_task_list,
                )
            except ListUnavailableError as error:
                if not self._forced:
                    logger.info("list refresh is off for this session: %s", error)
                    self.list_mode = False
                    return
                raise
            except SessionClosedError:
                raise
            except KlingError as error:
                logger.info("list refresh failed; pending tasks are queried instead: %s", error)
                return
            for task in tasks:
                state = wanted.pop(task.task_id, None)
                if state is not None:
                    found += 1
                    self._merge(state, task)
                    self._reschedule(state, listed=True)
                    state.next_due = max(state.next_due, next_round)
                    state.listed_in = number
            if not wanted or len(tasks) < _LIST_PAGE_SIZE:
                break
            last_made = tasks[-1].created_at if tasks else None
            if oldest is not None and last_made is not None:
                age = (self._server_now() - last_made).total_seconds()
                if wire.clock() - age < oldest - 60:
                    break  # this page is already older than every task still wanted
        for state in wanted.values():
            state.list_miss = True  # not listed: queried on its own from now on
        if found == 0 and self.list_mode is not True:
            self._fruitless += 1
            if self._fruitless >= _FRUITLESS_ROUNDS and not self._forced:
                logger.info("list refresh is off: the list never shows this session's tasks")
                self.list_mode = False
        elif found:
            self._fruitless = 0


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_NO_SCOPE = contextlib.nullcontext()


def _next_early(first: float, growth: float, age: float, start: float) -> float:
    """The age of the next early poll: ``first * growth**k`` past ``age``, at most ``start``."""
    if first <= 0 or first >= start:
        return start
    if age < first:
        return first
    try:
        if growth <= 1:
            target = first * (math.floor(age / first) + 1)
        else:
            target = first * growth ** (math.floor(math.log(age / first, growth)) + 1)
    except (OverflowError, ValueError, ZeroDivisionError):
        return start
    if growth > 1:
        while target <= age:  # floating point: at most a step or two
            target *= growth
    return min(target, start) if target > age else start


def _outcome(state: TaskState, generation: int) -> Task | None:
    """What the poll a follower dozed through came to: its task, its error raised, or None
    when no poll ended (or its leader was cancelled: the follower then takes its own turn)."""
    outcome = state.outcome
    if outcome is None or outcome[0] <= generation:
        return None
    if isinstance(outcome[1], KlingError):
        raise outcome[1]
    return outcome[1]


def _finish_order(state: TaskState) -> float:
    last = state.last
    if last is None or last.updated_at is None:
        return math.inf
    return last.updated_at.timestamp()


def _ids(states: Iterable[TaskState]) -> tuple[str, ...]:
    return tuple(state.task_id for state in states)
