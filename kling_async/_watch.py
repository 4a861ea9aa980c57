"""The poll scheduler: one state and one schedule per task id, shared by every wait on it.

All handles of a task id in a session share one `TaskState`. Waits take turns doing its poll
(Go's singleflight, without a background task): at most one query per task id is in flight,
concurrent `poll()` calls share it, and whoever leads a poll may be cancelled without
stalling the others (the next waiter takes over). Where the base URL offers the task list, one
list page refreshes every pending task it contains (``_list_refresh``); the schedule
(``_schedule``) polls densely only where completions are expected and learns that from tasks
it saw finish. State a handle has seen never goes backwards (`newer`).

Hints (a callback receiver's, through `Watcher.hint`) move a state on until the next reply
replaces it; a final one (with confirmation on) only makes the task's poll a confirming query
due now, so the waits themselves confirm it with one query. A task whose changes something
else tells of is polled at most every ``cap`` seconds (`Watcher.created`). What the session
and the receiver hear of (a slot freed, a task done or gone) goes through `WatchEvents`.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import attrs

from . import sansio
from ._account import CLOSED_WHILE_PENDING
from ._completed import as_completed
from ._config import check_timeout
from ._list_refresh import ListRefresh
from ._policies import PollPolicy
from ._schedule import Schedule, born_at, capped_delay, confirm_at, newer, rank
from ._task_state import LocalTaskStates, TaskState, TaskStates
from .errors import KlingError, NotFoundError, SessionClosedError, WaitTimeoutError
from .models import Task, TaskFamily, TaskInfo, TaskResult, TaskStatus

if TYPE_CHECKING:
    from ._clock import ServerClock
    from ._wire import Wire

__all__ = ["WatchEvents", "Watcher"]

_REMEMBERED_RUNNING = 10_000


def _nothing(task_id: str, running: bool) -> None:
    return None


class WatchEvents:
    """What a watcher tells the rest of the session; each listener is set by whoever wires it.

    ``slot_freed``: a task was seen finished (or let go): the parallel-task slot it held,
    if any, is free (the flag: it was seen running before, so a slot came free just now).
    ``done``: a wait saw the task finished, told once per task id (the journal records it).
    ``gone``: a query answered that the task does not exist (404/1203); it must not raise.
    ``finished``: the task's changes need no more telling (seen finished, or a final hint
    came while nobody waited): a callback receiver retires its token.
    ``seen``: a task object was taken in (as often as one comes): what it cost, its videos'
    lengths.
    """

    __slots__ = ("done", "finished", "gone", "seen", "slot_freed")

    def __init__(
        self,
        *,
        slot_freed: Callable[[str, bool], None] = _nothing,
        seen: Callable[[Task], None] = lambda task: None,
    ) -> None:
        self.slot_freed = slot_freed
        self.seen = seen
        self.done: Callable[[Task], Awaitable[None]] | None = None
        self.gone: Callable[[str, KlingError], Awaitable[None]] | None = None
        self.finished: Callable[[str], None] | None = None


class Watcher:
    """The task states of one session and the polls and waits on them (the driver: it only
    sends, sleeps and records; the schedule and the list rules decide)."""

    def __init__(
        self,
        wire: Wire,
        policy: PollPolicy,
        *,
        list_refresh: bool | None,
        events: WatchEvents | None = None,
        states: TaskStates | None = None,
    ) -> None:
        self._wire = wire
        self.policy = policy
        self.schedule = Schedule(policy)
        self.events = WatchEvents() if events is None else events
        self._states = LocalTaskStates() if states is None else states
        self._pending: dict[str, TaskState] = {}  # states someone waits on, not yet done
        # States polled at most every `cap` seconds, held until seen finished or let go:
        # hints may come for them while nobody holds a handle.
        self._capped: dict[str, TaskState] = {}
        # Ids seen not done, to notice them finish; the oldest are forgotten first past a bound.
        self._running: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lists = ListRefresh(
            wire, policy, mode=list_refresh, pending=self._pending, fold=self._listed
        )
        self.waits = 0
        self._states.bind(self)

    @property
    def list_mode(self) -> bool | None:
        """None while listing is tried, False once it is off, True when forced."""
        return self._lists.mode

    @property
    def list_requests(self) -> int:
        """List pages read to refresh waits."""
        return self._lists.requests

    # -- states -----------------------------------------------------------------------------

    def state(self, task_id: str) -> TaskState:
        """The shared state of ``task_id`` in this session (made on first use)."""
        return self._states.get(task_id)

    def created(
        self, task: Task, *, safety: float | None = None, family: TaskFamily = TaskFamily.EXTEND
    ) -> TaskState:
        """A task this session just made (of ``family``): its state, first poll by its age.

        ``safety``: something else (a callback receiver) tells of its changes; poll it only
        every ``safety`` seconds, as a safety net, and hold its state until it is finished.
        """
        state = self.state(task.task_id)
        state.family = family
        state.born = self._wire.clock()
        if safety is not None:
            state.cap = safety
            self._capped[state.task_id] = state
        self._merge(state, task)
        self._reschedule(state, listed=False)
        return state

    def seen_done(self, task_id: str) -> bool:
        """Whether the session has seen ``task_id`` finished."""
        state = self._states.find(task_id)
        last = state.last if state is not None else None
        return last is not None and last.done

    def hint(self, task_id: str, task: Task, *, confirm: bool) -> None:
        """A hint of ``task_id``'s state (a callback's, its id already checked), never the truth.

        A status on the way is merged (never backwards) as a hint: the next reply of that
        status or later replaces it, and with ``confirm`` it carries no result, cost or info
        (a source video's length among them). A final one is
        merged only without ``confirm``; with it, the task's poll becomes a confirming query
        due now and its waits wake, so that one of them confirms before any returns. When no
        wait is on the task, it is let go at once (`_let_go`). Nothing here awaits or queries.
        """
        state = self._states.find(task_id)
        if self._wire.closed or state is None:
            return
        last = state.last
        if last is not None and last.done:
            return  # already seen finished: a duplicate or a late one changes nothing
        if not task.done:
            if confirm:  # unchecked words: its status and times only, until a reply comes
                task = attrs.evolve(
                    task, result=TaskResult(), info=TaskInfo(), final_unit_deduction=None, cost=None
                )
            self._merge(state, task, hinted=True)
            return
        if not confirm:
            self._merge(state, task)  # trusted: the receiver is reached by Kling alone
            return
        state.confirm_due = True
        if state.waiters == 0:
            self._let_go(state)
        if state.busy:
            return  # the poll in flight may predate the hint: `_lead` confirms after it
        state.next_due = confirm_at(self._wire.clock(), state.confirmed_at, state.next_due)
        state.notify()

    def _let_go(self, state: TaskState) -> None:
        """A final hint for a task nobody waits on: keep nothing for it but its handles.

        Its hints are no longer wanted (`WatchEvents.finished`), the state lives on only while
        a handle holds it, and its id stops counting as running (a freed slot wakes a create
        waiting for one). A wait that comes later confirms with one query at once and then
        polls on the usual schedule.
        """
        state.cap = None
        self._release(state)
        running = self._running
        if state.task_id in running:
            del running[state.task_id]
            self.events.slot_freed(state.task_id, True)

    def _release(self, state: TaskState) -> None:
        """Its changes need no more telling: the watcher stops holding it; tell the listener."""
        self._capped.pop(state.task_id, None)
        finished = self.events.finished
        if finished is not None:
            finished(state.task_id)

    @property
    def tracked(self) -> int:
        """Task states held: a live handle or wait, or a capped task not yet finished."""
        return len(self._states)

    def close(self) -> None:
        """Wake every wait (each then sees the session closed and raises)."""
        self._capped.clear()
        for state in self._states:
            state.notify()
        self._lists.close()

    # -- one query --------------------------------------------------------------------------

    async def query(self, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> Task:
        """Query one task on its family's route (with the query retries); fold it in."""
        wire = self._wire
        task = await wire.call(
            sansio.query_request(wire.base_url, task_id, family),
            lambda response, now: sansio.parse_task(response, now, task_id=task_id),
        )
        state = self._states.find(task_id)
        if state is None and task.task_id != task_id:
            state = self._states.find(task.task_id)
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
        confirming = state.confirm_due
        if confirming:
            state.confirm_due = False
            state.confirmed_at = self._wire.clock()
            listed = False  # a confirm is one query: it must not wait for a list round
        answered = False
        try:
            if listed and await self._lists.refresh(state):
                task = state.last
                assert task is not None
            else:
                task = await self.query(state.task_id, state.family)
                answered = True
                state.polls += 1
                self._reschedule(state, listed=False, confirmed=confirming)
            if state.confirm_due and not task.done:
                # A final hint came while this poll was in flight: confirm it next.
                now = self._wire.clock()
                state.next_due = confirm_at(now, state.confirmed_at, state.next_due)
        except KlingError as error:
            state.outcome = (state.generation + 1, error)
            if isinstance(error, NotFoundError):
                self.events.slot_freed(state.task_id, False)  # no task runs under that id
            gone = self.events.gone
            if isinstance(error, NotFoundError) and gone is not None:
                await gone(state.task_id, error)
            raise
        else:
            state.outcome = (state.generation + 1, task)
            return task
        finally:
            if confirming and not answered:
                state.confirm_due = True  # failed or cancelled: the next poll confirms
            state.busy = False
            state.generation += 1
            state.notify()

    def _merge(
        self, state: TaskState, task: Task, *, hinted: bool = False, shared: bool = False
    ) -> Task:
        """Fold a reply (or a hint) into the shared state; return the state now seen (never
        older). A reply replaces a hint of its status or an earlier one whatever their
        clocks say: a hint's ``updated_at`` cannot make genuine replies look stale. A new
        reply this process received (not ``shared``: read from the store) is recorded."""
        old = state.last
        if hinted:
            take = newer(old, task)
        else:
            replied = state.replied
            take = newer(replied, task)
            if take:
                state.replied = task
                if not shared and task != replied:
                    self._states.recorded(task)
                if old is not None and old is not replied:  # the state shows a hint
                    take = rank(task.status) >= rank(old.status)
        if take:
            state.last = task
            if state.born is None and not hinted:
                state.born = born_at(self._wire.clock(), self._server_now(), task.created_at)
            self._saw(task)
            if old is None or old.status != task.status:
                state.notify()
            if task.done:
                self._pending.pop(state.task_id, None)
                state.confirm_due = False
                self._release(state)
        return state.last  # type: ignore[return-value]  # set above or before

    def _listed(self, state: TaskState, task: Task) -> None:
        """A list page showed ``task``: fold it in; its next poll comes on the list cadence."""
        self._merge(state, task)
        self._reschedule(state, listed=True)

    def _saw(self, task: Task) -> None:
        """Notice tasks that finish: a task seen done frees its parallel-task slot, whoever
        made it (a task made by a process that died holds one until someone sees it done)."""
        self.events.seen(task)
        running = self._running
        if not task.done:
            running[task.task_id] = None
            if len(running) > _REMEMBERED_RUNNING:
                running.popitem(last=False)
            return
        was_running = task.task_id in running
        self.events.slot_freed(task.task_id, was_running)
        if was_running:
            del running[task.task_id]
            if task.status is TaskStatus.SUCCEED and task.created_at and task.updated_at:
                self.schedule.observe((task.updated_at - task.created_at).total_seconds())

    def _server_now(self) -> dt.datetime:
        """Now on the server's clock, which a task's ``created_at`` is on."""
        return dt.datetime.fromtimestamp(self._wire.server_time(), dt.timezone.utc)

    def _reschedule(self, state: TaskState, *, listed: bool, confirmed: bool = False) -> None:
        wire = self._wire
        now = wire.clock()
        age = now - (state.born if state.born is not None else now)
        delay = self.schedule.delay(age, listed=listed, rng=wire.rng)
        jitter = self.policy.jitter
        delay = capped_delay(delay, state.cap, jitter=jitter, rng=wire.rng, confirmed=confirmed)
        state.next_due = now + delay

    # -- waiting ----------------------------------------------------------------------------

    async def wait(
        self, state: TaskState, condition: Callable[[Task], bool], timeout: float | None
    ) -> Task:
        """Return the state once ``condition`` holds; poll when due, or let another poll."""
        check_timeout(timeout)
        last = state.last
        if last is not None and condition(last):
            await self.finished(state)
            return last
        wire = self._wire
        wire.check_open()
        if state.last is None and state.polls == 0 and state.next_due == 0.0:
            # A task this process knows nothing of: a shared store may know it (its maker
            # recorded the create's reply there, or it finished long ago) before a poll.
            state.next_due = wire.clock() + self._states.first_look
        self.waits += 1
        self.interest(state, +1)
        try:
            with anyio.move_on_after(timeout) if timeout is not None else _NO_SCOPE:
                # One turn of the loop first: waits started together (a gather) all count as
                # pending before the first of them polls, so they can share a list page.
                await anyio.lowlevel.checkpoint()
                while True:
                    last = state.last
                    if last is not None and condition(last):
                        await self.finished(state)
                        return last
                    await self._step(state)
        finally:
            self.waits -= 1
            self.interest(state, -1)
        raise WaitTimeoutError(state.task_id, timeout=timeout or 0.0, last=state.last)

    async def _step(self, state: TaskState) -> None:
        """Lead the poll if it is due and nobody else does; else doze until something moves.

        While another process polls for this one (`TaskStates.polling` is False), doze until
        the store brings news or the poller changes.
        """
        if not self._states.polling:
            await self._doze(state, math.inf)
            return
        now = self._wire.clock()
        if state.busy or now < state.next_due:
            generation = state.generation
            await self._doze(state, state.next_due - now if not state.busy else math.inf)
            _outcome(state, generation)  # the poll this wait dozed through failed: so does it
            return
        await self._lead(state, self._lists.active and not state.confirm_due)

    async def _doze(self, state: TaskState, seconds: float) -> None:
        """Sleep ``seconds`` or until the state changes (closing the session changes it)."""
        wire = self._wire
        if wire.closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
        else:
            await state.sleep(wire.loop, seconds)
        if wire.closed:
            raise SessionClosedError(CLOSED_WHILE_PENDING)

    def as_completed(
        self, states: Iterable[TaskState], timeout: float | None
    ) -> AsyncGenerator[Task, None]:
        """Yield each task once it is done, in the order it finished (see KlingSession)."""
        return as_completed(self, states, timeout)

    # -- for as_completed (``_completed``) and the task-state store ----------------------------

    @property
    def polling(self) -> bool:
        """Whether this process's waits query Kling themselves now (`TaskStates.polling`)."""
        return self._states.polling

    def fold(self, task: Task) -> None:
        """A reply read from the shared store: merged into its state if one is held."""
        state = self._states.find(task.task_id)
        if state is not None and not self._wire.closed:
            unscheduled = state.last is None and state.polls == 0
            self._merge(state, task, shared=True)
            if unscheduled and state.last is not None and not state.last.done:
                self._reschedule(state, listed=False)  # its first poll by its age

    async def follow(self, task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> None:
        """Wait until ``task_id`` is done (a poller's background wait on another's task),
        polled on ``family``'s routes unless this process holds its state already.

        A task this process knows nothing of yet is first looked for in the shared store
        (its maker recorded its create's reply there): it is polled on the schedule of its
        age, not at once; only if the store has nothing within its ``first_look`` is it polled.
        """
        state = self._states.find(task_id)
        if state is None:
            state = self.state(task_id)
            state.family = family
        await self.wait(state, _is_done, None)

    def wake(self) -> None:
        """Wake every wait: whether this process polls has changed."""
        for state in self._states:
            state.notify()

    @property
    def server_clock(self) -> ServerClock:
        """What the server's replies told of its clock (a signed callback's time is on it)."""
        return self._wire.server_clock

    @property
    def clock(self) -> float:
        """The session's loop time now."""
        return self._wire.clock()

    @property
    def closed(self) -> bool:
        """Whether the session is closed."""
        return self._wire.closed

    def check_open(self) -> None:
        """Raise `SessionClosedError` if the session is closed."""
        self._wire.check_open()

    async def finished(self, state: TaskState) -> None:
        """Hand a finished task to the `WatchEvents.done` listener, once per task id."""
        done = self.events.done
        if done is None or state.recorded:
            return
        last = state.last
        if last is not None and last.done:
            state.recorded = True
            await done(last)

    def interest(self, state: TaskState, change: int) -> None:
        """One wait more (+1) or fewer (-1) on ``state``: it is pending while one is."""
        state.waiters += change
        pending = state.waiters > 0 and not (state.last is not None and state.last.done)
        if pending:
            self._pending[state.task_id] = state
        else:
            self._pending.pop(state.task_id, None)
        self._states.watching(state.task_id, pending)

    async def lead_many(self, due: list[TaskState]) -> None:
        """Poll every due task: one list refresh where it serves, else queries side by side.

        Confirming queries of final hints go first, as queries of their own, without a list round.
        """
        confirms = [s for s in due if s.confirm_due]
        if confirms:
            due = confirms
        elif self._lists.active and due:
            number = await self._lists.round()
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


def _is_done(task: Task) -> bool:
    return task.done


_NO_SCOPE = contextlib.nullcontext()


def _outcome(state: TaskState, generation: int) -> Task | None:
    """What the poll a follower dozed through came to: its task, its error raised, or None
    when no poll ended (or its leader was cancelled: the follower then takes its own turn)."""
    outcome = state.outcome
    if outcome is None or outcome[0] <= generation:
        return None
    if isinstance(outcome[1], KlingError):
        raise outcome[1]
    return outcome[1]
