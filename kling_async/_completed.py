"""`as_completed`: many waits as one loop, yielding each task in the order it finished.

It stands on the watcher's public calls (``_watch``): the waits count as pending while it
runs, due polls go out together (one list round where it serves), and it dozes on one event
that every task state it waits on sets when it changes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Iterable
from typing import Protocol

import anyio

from ._account import CLOSED_WHILE_PENDING
from ._config import check_timeout
from ._task_state import TaskState
from .errors import SessionClosedError, WaitTimeoutError
from .models import Task

__all__ = ["Completing", "as_completed"]

_STEP_SLACK = 0.05  # seconds by which a poll may come early to join a step


class Completing(Protocol):
    """What `as_completed` needs of the watcher."""

    waits: int

    @property
    def polling(self) -> bool:
        """Whether this process's waits query Kling themselves now."""

    @property
    def clock(self) -> float:
        """The session's loop time now."""

    @property
    def closed(self) -> bool:
        """Whether the session is closed."""

    def check_open(self) -> None:
        """Raise `SessionClosedError` if the session is closed."""

    async def finished(self, state: TaskState) -> None:
        """Hand a finished task to the done listener, once per task id."""

    def interest(self, state: TaskState, change: int) -> None:
        """One wait more (+1) or fewer (-1) on ``state``."""

    async def lead_many(self, due: list[TaskState]) -> None:
        """Poll every due task (one list round where it serves)."""


async def as_completed(
    watcher: Completing, states: Iterable[TaskState], timeout: float | None
) -> AsyncGenerator[Task, None]:
    """Yield each task once it is done, in the order it finished (see KlingSession)."""
    check_timeout(timeout)
    unique = list(dict.fromkeys(states))
    watcher.check_open()
    deadline = math.inf if timeout is None else watcher.clock + timeout
    waiting: list[TaskState] = []
    for state in unique:
        if state.last is not None and state.last.done:
            await watcher.finished(state)
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
        watcher.interest(state, +1)
    watcher.waits += 1
    try:
        while waiting:
            finished = [s for s in waiting if s.last is not None and s.last.done]
            if finished:
                finished.sort(key=_finish_order)
                for state in finished:
                    waiting.remove(state)
                    _forget(watcher, state, moved)
                for state in finished:
                    assert state.last is not None
                    await watcher.finished(state)
                    yield state.last
                continue
            now = watcher.clock
            if now >= deadline:
                raise WaitTimeoutError(
                    None, timeout=timeout or 0.0, last=None, pending=_ids(waiting)
                )
            # While another process polls for this one, the states' changes wake it.
            idle = [s for s in waiting if not s.busy] if watcher.polling else []
            # Polls due within the next moment go now too: fewer, fuller steps.
            due = [s for s in idle if s.next_due <= now + _STEP_SLACK]
            if due:
                with anyio.move_on_after(deadline - now):
                    await watcher.lead_many(due)
                continue
            if moved.is_set():
                moved = _renew(waiting, moved)
                continue
            soonest = min((s.next_due for s in idle), default=math.inf)
            with anyio.move_on_after(min(soonest, deadline) - now):
                await moved.wait()
            if watcher.closed:
                raise SessionClosedError(CLOSED_WHILE_PENDING)
    finally:
        watcher.waits -= 1
        for state in waiting:
            _forget(watcher, state, moved)


def _forget(watcher: Completing, state: TaskState, moved: anyio.Event) -> None:
    if state.listeners is not None and moved in state.listeners:
        state.listeners.remove(moved)
        if not state.listeners:
            state.listeners = None
        watcher.interest(state, -1)


def _renew(waiting: list[TaskState], moved: anyio.Event) -> anyio.Event:
    fresh = anyio.Event()
    for state in waiting:
        listeners = state.listeners
        if listeners is not None:
            listeners[listeners.index(moved)] = fresh
    return fresh


def _finish_order(state: TaskState) -> float:
    last = state.last
    if last is None or last.updated_at is None:
        return math.inf
    return last.updated_at.timestamp()


def _ids(states: Iterable[TaskState]) -> tuple[str, ...]:
    return tuple(state.task_id for state in states)
