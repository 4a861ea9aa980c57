"""TaskHandle: one remote task; awaiting it waits for the result.

A handle is a thin view of the task's shared state in its session (``_task_state``, polled
by ``_watch``): every handle of one task id in a session sees the same newest state and
shares one poll schedule. It is cheap, can be made again from a stored id (`task()`), and
loses nothing when a wait is cancelled or times out: the remote task keeps running (Kling
has no cancel) and the handle can wait again.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from .errors import TaskFailedError
from .models import Task, TaskFamily, TaskStatus

if TYPE_CHECKING:
    from ._task_state import TaskState
    from ._watch import Watcher

__all__ = ["TaskHandle", "states_of"]


class TaskHandle:
    """An extend task on the server: ``await handle`` returns the finished task.

    Get one from ``KlingSession.extend()`` or, for a stored id, ``KlingSession.task()``.

    Added in version 0.1.
    """

    __slots__ = ("_state", "_watcher")

    def __init__(self, watcher: Watcher, state: TaskState) -> None:
        self._watcher = watcher
        self._state = state

    def __repr__(self) -> str:
        last = self._state.last
        status = last.status.value if last is not None else "unknown"
        return f"<TaskHandle {self._state.task_id} {status}>"

    @property
    def task_id(self) -> str:
        """The server's id for the task; store it to resume with `task()`."""
        return self._state.task_id

    @property
    def family(self) -> TaskFamily:
        """The task's family, whose routes it is polled on (versionadded 0.3)."""
        return self._state.family

    @property
    def last(self) -> Task | None:
        """The newest state of the task the session has seen, or None before the first poll.

        It never goes back to an earlier status, whatever order replies arrive in.
        """
        return self._state.last

    @property
    def status(self) -> TaskStatus | None:
        """The last known status, or None before the first poll of a resumed handle."""
        last = self._state.last
        return last.status if last is not None else None

    @property
    def done(self) -> bool:
        """True once the session has seen the task finish (``succeed`` or ``failed``)."""
        last = self._state.last
        return last is not None and last.done

    async def poll(self) -> Task:
        """Query the task now (with the session's query retries) and return the newest state.

        Concurrent polls of one task id share one query.
        """
        return await self._watcher.poll(self._state)

    async def wait_started(self, *, timeout: float | None = None) -> Task:
        """Return the task once it is ``processing`` or finished (an unknown status waits on)."""
        return await self._watcher.wait(self._state, _started, timeout)

    async def wait(self, *, timeout: float | None = None) -> Task:
        """Return the finished task; raise TaskFailedError if it failed.

        ``timeout`` bounds the whole wait, HTTP time included, and raises WaitTimeoutError;
        the caller's own cancel scope bounds it too. Neither touches the remote task.
        """
        task = await self._watcher.wait(self._state, _finished, timeout)
        if task.status is TaskStatus.FAILED:
            raise TaskFailedError(task)
        return task

    def __await__(self) -> Generator[Any, None, Task]:
        return self.wait().__await__()

    async def watch(self) -> AsyncGenerator[Task, None]:
        """Yield the task each time its status changes; end once it is done.

        A failed task is yielded like any other (it does not raise): check ``task.status``.
        Leaving the loop early is fine: between yields nothing is pending.
        """
        last = self._state.last
        if last is not None and last.done:
            yield last
            return
        task = await self.poll()
        while True:
            yield task
            if task.done:
                return
            task = await self._watcher.wait(self._state, _moved_on(task.status), None)


def _started(task: Task) -> bool:
    # An undocumented status may well be a queueing stage: only a known one counts as started.
    return task.status.known and task.status is not TaskStatus.SUBMITTED


def _finished(task: Task) -> bool:
    return task.done


def _moved_on(seen: TaskStatus) -> Callable[[Task], bool]:
    return lambda task: task.done or task.status != seen


def states_of(handles: Iterable[object], watcher: Watcher) -> list[TaskState]:
    """The shared states of ``handles``, each a `TaskHandle` of ``watcher``'s session
    (``TypeError`` for anything else, ``ValueError`` for another session's handle)."""
    states = []
    for handle in handles:
        if not isinstance(handle, TaskHandle):
            raise TypeError(f"as_completed() takes TaskHandles, not {type(handle).__name__}")
        if handle._watcher is not watcher:
            raise ValueError(f"{handle!r} belongs to another session")
        states.append(handle._state)
    return states
