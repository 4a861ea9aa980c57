"""What every MCP tool call shares: the one session, the ledger, the limits and the folders.

`KlingTools.create` is the one way a tool creates: it checks the spending limit
(`_mcp_spending`), keys the create (the caller's key, else one of the server's own, so that
every task it makes is in its journal before it is sent) and runs it in the server's own
task group, so that a create whose tool call was cancelled still finishes and is recorded
(docs/mcp.md, "Safety rules"). `KlingTools.start_run` runs a longer job (a chain) in that
group too, until it ends or the server stops serving. `KlingTools.start` counts what the
journal holds and follows its unfinished tasks, so that a restart resets no limit.
"""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from ._handle import TaskHandle
from ._journal import EntryState
from ._mcp_results import SpendingRefusal
from ._mcp_spending import Ledger, Limits, Reservation
from ._session import KlingSession
from ._sqlite_journal import SQLiteJournal
from .errors import JournalError, KlingError, TaskFailedError
from .models import Task, TaskFamily

__all__ = ["KlingTools", "server_key"]

logger = logging.getLogger("kling_async")


def server_key() -> str:
    """A new key of the server's own, for a create that came without one: ``mcp/`` and 32
    hex digits, new at every call (docs/mcp.md, "Safety rules")."""
    return f"mcp/{uuid.uuid4().hex}"


class KlingTools:
    """What every tool call shares: the session, the ledger, the limits and the folders."""

    def __init__(
        self,
        session: KlingSession,
        group: anyio.abc.TaskGroup,
        *,
        journal: SQLiteJournal,
        limits: Limits,
        out: pathlib.Path,
        allow_dirs: tuple[pathlib.Path, ...],
    ) -> None:
        self.session = session
        self.ledger = Ledger()
        self.limits = limits
        self.out = out
        self.allow_dirs = allow_dirs
        self.journal = journal  # the session's own: chains are read back from it
        self._group = group
        self._runs: set[anyio.CancelScope] = set()
        self._creating = 0  # creates started and not yet done
        self._idle = anyio.Event()  # set when _creating falls to 0

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

    async def start(self) -> None:
        """Count every task of the journal (a restart resets no limit), then, in the
        server's task group, settle its creates in doubt and follow its unfinished tasks
        to their end, so that the ledger learns what they cost."""
        self.ledger.restore(await self.journal.entries())
        self.start_run(self._follow_journal)

    async def _follow_journal(self) -> None:
        try:
            handles = await self.session.resume()  # logs, and leaves, what it cannot settle
            self.ledger.settled(await self.journal.entries())
        except (KlingError, JournalError, RuntimeError) as error:  # the server keeps serving
            logger.warning("could not follow the journal's unfinished tasks: %s", error)
            return
        async with anyio.create_task_group() as group:
            for handle in handles:
                group.start_soon(self._follow, handle)

    async def _follow(self, handle: TaskHandle) -> None:
        try:
            task = await handle.wait()
        except TaskFailedError as failed:
            task = failed.task
        except (KlingError, JournalError) as error:  # still counted as running
            logger.warning("could not follow task %s: %s", handle.task_id, error)
            return
        self.ledger.saw(task, handle.family)

    async def create(
        self,
        family: TaskFamily,
        key: str | None,
        start: Callable[[str], Awaitable[TaskHandle]],
    ) -> TaskHandle:
        """Check the spending limit, then run ``start`` with the create's key (``key``, or
        a new one of the server's, which no caller's can be: it has a '/', refused by
        `check_create_key`) in the server's task group: the create completes, and is in the
        journal, even when the tool call is cancelled."""
        if key is None or not await self._paid_for(key):
            self.catch_up()
            refusal = self.ledger.refusal(self.limits)
            if refusal is not None:
                raise SpendingRefusal(refusal)
        used = server_key() if key is None else key
        reservation = self.ledger.reserve(family)
        done = anyio.Event()
        outcome: list[TaskHandle | Exception] = []

        async def run() -> None:
            try:
                handle = await start(used)
            except Exception as error:  # handed to the caller below, if it still listens
                await self._failed(reservation, used)
                outcome.append(error)
            else:
                self.ledger.created(reservation, handle.task_id, used)
                outcome.append(handle)
            finally:
                self._creating -= 1
                if not self._creating:
                    self._idle.set()
                done.set()

        self._creating += 1
        self._group.start_soon(run)
        await done.wait()
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def _failed(self, reservation: Reservation, key: str) -> None:
        """A create under ``key`` raised: the journal says whether it made a task after all,
        may have made one (in doubt: still counted), or made none."""
        try:
            entry = await self.journal.get(key)
        except (JournalError, RuntimeError) as error:  # unknown: keep counting it
            logger.warning("could not read the journal's record of %r: %s", key, error)
            self.ledger.in_doubt(reservation, key)
            return
        if entry is not None and entry.task_id is not None:
            self.ledger.created(reservation, entry.task_id, key)
        elif entry is not None and entry.state is EntryState.SENDING:
            self.ledger.in_doubt(reservation, key)
        else:
            self.ledger.released(reservation)

    async def settled(self) -> None:
        """Return once no create is on its way (each has made its task, or failed)."""
        if self._creating:
            if self._idle.is_set():
                self._idle = anyio.Event()
            await self._idle.wait()

    async def _paid_for(self, key: str) -> bool:
        """Whether a create with ``key`` already made its task (here, or in the journal
        before a restart): sending it again pays nothing, so the limit does not stop it."""
        if self.ledger.known_key(key) is not None:
            return True
        entry = await self.journal.get(key)
        return entry is not None and entry.task_id is not None

    def start_run(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` (a chain) in the server's task group: a cancelled tool call never
        stops it; `stop_runs` does, when the server stops serving."""

        async def guarded() -> None:
            with anyio.CancelScope() as scope:
                self._runs.add(scope)
                try:
                    await run()
                finally:
                    self._runs.discard(scope)

        self._group.start_soon(guarded)

    @property
    def runs(self) -> int:
        """How many runs (chains, the journal's unfinished tasks) are going."""
        return len(self._runs)

    def stop_runs(self) -> None:
        """Stop every run still going (creates already sent still finish and are recorded:
        they run in the group beside it); a keyed chain resumes from the journal later."""
        for scope in list(self._runs):
            scope.cancel()
