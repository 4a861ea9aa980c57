"""TaskHandle: one remote task, polled on demand; awaiting it waits for the result.

A handle holds only the task id and the last state seen, so it is cheap, can be made again
from a stored id (`task()`), and loses nothing when a wait is cancelled or
times out: the remote task keeps running (Kling has no cancel) and the handle can wait again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import anyio

from .errors import TaskFailedError, WaitTimeoutError
from .models import Task, TaskStatus

if TYPE_CHECKING:
    from ._session import KlingSession

__all__ = ["TaskHandle"]


class TaskHandle:
    """An extend task on the server: ``await handle`` returns the finished task.

    Get one from ``KlingSession.extend()`` or, for a stored id, ``KlingSession.task()``.

    Added in version 0.1.
    """

    __slots__ = ("_last", "_session", "_task_id")

    def __init__(self, session: KlingSession, task_id: str, last: Task | None = None) -> None:
        self._session = session
        self._task_id = task_id
        self._last = last

    def __repr__(self) -> str:
        status = self._last.status.value if self._last is not None else "unknown"
        return f"<TaskHandle {self._task_id} {status}>"

    @property
    def task_id(self) -> str:
        """The server's id for the task; store it to resume with `task()`."""
        return self._task_id

    @property
    def last(self) -> Task | None:
        """The last state of the task this handle saw, or None before the first poll."""
        return self._last

    @property
    def status(self) -> TaskStatus | None:
        """The last known status, or None before the first poll of a resumed handle."""
        return self._last.status if self._last is not None else None

    @property
    def done(self) -> bool:
        """True once the handle has seen the task finish (``succeed`` or ``failed``)."""
        return self._last is not None and self._last.done

    async def poll(self) -> Task:
        """Query the task once (with the session's query retries) and return its state."""
        session = self._session
        session._check_open()
        task = await session._query(self._task_id)
        self._last = task
        return task

    async def wait_started(self, *, timeout: float | None = None) -> Task:
        """Return the task once it is ``processing`` or finished (an unknown status waits on)."""
        return await self._wait_for(_started, timeout)

    async def wait(self, *, timeout: float | None = None) -> Task:
        """Return the finished task; raise TaskFailedError if it failed.

        ``timeout`` bounds the whole wait, HTTP time included, and raises WaitTimeoutError;
        the caller's own cancel scope bounds it too. Neither touches the remote task.
        """
        task = await self._wait_for(_finished, timeout)
        if task.status is TaskStatus.FAILED:
            raise TaskFailedError(task)
        return task

    def __await__(self) -> Generator[Any, None, Task]:
        return self.wait().__await__()

    async def watch(self) -> AsyncIterator[Task]:
        """Yield the task each time its status changes; end once it is done.

        A failed task is yielded like any other (it does not raise): check ``task.status``.
        Leaving the loop early is fine: between yields nothing is pending.
        """
        if self._last is not None and self._last.done:
            yield self._last
            return
        seen: TaskStatus | None = None
        session = self._session
        polls = 0
        while True:
            session._waits_pending += 1
            try:
                if polls:
                    await session._sleep(session.poll_policy.delay(polls, session._rng))
                task = await self.poll()
            finally:
                session._waits_pending -= 1
            polls += 1
            if task.status != seen:
                seen = task.status
                yield task
            if task.done:
                return

    async def _wait_for(self, condition: Callable[[Task], bool], timeout: float | None) -> Task:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        if self._last is not None and condition(self._last):
            return self._last
        session = self._session
        session._check_open()
        session._waits_pending += 1
        try:
            with anyio.move_on_after(timeout):
                polls = 0
                while True:
                    task = await self.poll()
                    if condition(task):
                        return task
                    polls += 1
                    await session._sleep(session.poll_policy.delay(polls, session._rng))
        finally:
            session._waits_pending -= 1
        raise WaitTimeoutError(self._task_id, timeout=timeout or 0.0, last=self._last)


def _started(task: Task) -> bool:
    # An undocumented status may well be a queueing stage: only a known one counts as started.
    return task.status.known and task.status is not TaskStatus.SUBMITTED


def _finished(task: Task) -> bool:
    return task.done
