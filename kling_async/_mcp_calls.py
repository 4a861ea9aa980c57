"""What every MCP tool call shares: the one session, the ledger, the limits and the folders.

`KlingTools.create` is the one way a tool creates: it checks the spending limit
(`_mcp_spending`) and runs the create in the server's own task group, so that a create
whose tool call was cancelled still finishes and is recorded (docs/mcp.md, "Safety rules").
"""

from __future__ import annotations

import pathlib
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from ._handle import TaskHandle
from ._mcp_results import ToolProblem
from ._mcp_spending import Ledger, Limits
from ._session import KlingSession
from .models import Task, TaskFamily

__all__ = ["KlingTools"]


class KlingTools:
    """What every tool call shares: the session, the ledger, the limits and the folders."""

    def __init__(
        self,
        session: KlingSession,
        group: anyio.abc.TaskGroup,
        *,
        limits: Limits,
        out: pathlib.Path,
        allow_dirs: tuple[pathlib.Path, ...],
    ) -> None:
        self.session = session
        self.ledger = Ledger()
        self.limits = limits
        self.out = out
        self.allow_dirs = allow_dirs
        self._group = group

    def family(self, task_id: str, named: TaskFamily | None) -> TaskFamily:
        """The family to query ``task_id`` on: the one named, else the one it was made
        with here, else an extend."""
        return named or self.ledger.family(task_id) or TaskFamily.EXTEND

    def saw(self, task: Task, family: TaskFamily) -> None:
        """A tool is about to show ``task``: the ledger learns its state and cost."""
        self.ledger.saw(task, family)

    def catch_up(self) -> None:
        """Tell the ledger the newest state the session knows of each running task."""
        for task_id, family in self.ledger.running():
            last = self.session.task(task_id, family=family).last
            if last is not None:
                self.ledger.saw(last, family)

    async def create(
        self, family: TaskFamily, key: str | None, start: Callable[[], Awaitable[TaskHandle]]
    ) -> TaskHandle:
        """Check the spending limit, then run ``start`` in the server's task group: the
        create completes, and is recorded, even when the tool call is cancelled."""
        if key is None or self.ledger.known_key(key) is None:
            self.catch_up()
            refusal = self.ledger.refusal(self.limits)
            if refusal is not None:
                raise ToolProblem(refusal)
        reservation = self.ledger.reserve(family)
        done = anyio.Event()
        outcome: list[TaskHandle | Exception] = []

        async def run() -> None:
            try:
                handle = await start()
            except Exception as error:  # handed to the caller below, if it still listens
                self.ledger.released(reservation)
                outcome.append(error)
            else:
                self.ledger.created(reservation, handle.task_id, key)
                outcome.append(handle)
            finally:
                done.set()

        self._group.start_soon(run)
        await done.wait()
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result
