"""`SQLiteJournal`: the embedded `Journal`, one SQLite file shared safely by processes.

This module is the async driver: it checks arguments, runs each step off the event loop
and wakes the claims waiting for a key. The SQL of each step is in ``_journal_sql``, the
schema in ``_journal_schema``, the row codec in ``_journal_rows``, owner liveness (lock
files) in ``_journal_owners`` and the state machine's decisions in ``_journal_rules``.

**Durability.** WAL mode with ``synchronous=NORMAL`` by default: a commit is in the OS before
it returns, so it survives the process being killed at any point, which is the failure this
journal is for (deploys, OOM kills, Ctrl+C); a power loss or OS crash may lose the last
commits, and losing a ``SENDING`` could then let a re-run pay twice. ``synchronous="FULL"``
fsyncs every commit and survives power loss too, at the cost of one fsync per step (see
``bench/bench_journal.py``). Writes take ``BEGIN IMMEDIATE`` (one writer per key across
processes; no read-then-upgrade deadlock), and a busy timeout (60 s by default) makes a
contended writer wait instead of failing with "database is locked".

**Threads.** Every call runs in anyio's worker threads (``anyio.to_thread.run_sync``) behind
a per-instance ``CapacityLimiter(1)``, on one connection opened with
``check_same_thread=False`` and guarded by a lock: one statement at a time, never on the
event loop. The journal starts no threads of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pathlib
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.to_thread

from ._journal import Claim, JournalEntry, check_claim, check_id, check_key, check_video
from ._journal_owners import Owners
from ._journal_rows import stamp_time, task_text
from ._journal_rules import MARK_CREATED, MARK_NOT_SENT, MARK_REFUSED, MARK_SENDING, Move
from ._journal_sql import JournalSQL
from ._journal_wait import claim_waiting
from ._source_requests import CreateRequest
from .models import TaskStatus

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["SQLiteJournal"]

_T = TypeVar("_T")
_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"


class SQLiteJournal:
    """The embedded journal: one SQLite file in WAL mode, shared safely by processes.

    ``path`` is the database file (created with its schema when missing); owner lock files go
    in ``<path>.owners/``. ``synchronous`` is ``"NORMAL"`` (survives a killed process) or
    ``"FULL"`` (also power loss, one fsync per step); ``busy_timeout`` is how long a writer
    waits for another process's transaction. Constructing does no I/O; ``async with`` opens.

    Added in version 0.2.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 60.0,
    ) -> None:
        self._path = pathlib.Path(os.fspath(path))
        if str(self._path) in ("", ":memory:"):
            raise ValueError("a journal needs a file path; an in-memory one survives nothing")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)):
            raise TypeError("busy_timeout must be a number of seconds")
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout must be > 0, got {busy_timeout!r}")
        self._owners = Owners(self._path.with_name(self._path.name + ".owners"))
        self._sql = JournalSQL(
            self._path, self._owners, synchronous=synchronous, busy_timeout=float(busy_timeout)
        )
        self._state = _UNOPENED
        self._limiter: anyio.CapacityLimiter | None = None
        self._released: anyio.Event | None = None  # set when a key owned here is let go

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> SQLiteJournal:
        if self._state != _UNOPENED:
            raise RuntimeError(f"a journal can be opened once; this one is {self._state}")
        self._limiter = anyio.CapacityLimiter(1)
        self._released = anyio.Event()
        with anyio.CancelScope(shield=True):  # an open cut short would leak the lock file
            await anyio.to_thread.run_sync(self._sql.open, limiter=self._limiter)
        self._state = _OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release every key owned here, close the file and remove the owner lock file."""
        if self._state != _OPEN:
            self._state = _CLOSED
            return
        self._state = _CLOSED
        self._wake()  # waiters in claim(wait=) see the journal closed
        assert self._limiter is not None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._sql.close, limiter=self._limiter)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sql = getattr(self, "_sql", None)
        if sql is not None and sql.is_open:
            _warn(
                f"{self!r} was never closed; use 'async with SQLiteJournal(...)' or aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            with contextlib.suppress(Exception):
                sql.close()

    def __repr__(self) -> str:
        return f"<SQLiteJournal {str(self._path)!r} {self._state}>"

    @property
    def path(self) -> pathlib.Path:
        """The database file."""
        return self._path

    @property
    def token(self) -> str:
        """This instance's owner token (empty until opened)."""
        return self._owners.token

    def owner_file(self, token: str) -> pathlib.Path:
        """The lock file whose lock says that owner ``token`` is alive (for messages)."""
        return self._owners.path(token)

    # -- the protocol ---------------------------------------------------------------------

    async def claim(
        self,
        key: str,
        request: CreateRequest,
        *,
        now: dt.datetime,
        stamp: str | None = None,
        wait: float = 0.0,
    ) -> Claim:
        """Look ``key`` up and record the intent atomically; see `ClaimOutcome`.

        ``request`` is the caller's request; ``stamp`` the external id the session would
        stamp on it (recorded with a new intent only; not part of the request's identity).
        A key recorded for another request raises ``ValueError``. A BUSY key is polled for
        up to ``wait`` seconds (woken at once when this instance lets it go) before BUSY is
        returned.
        """
        check_claim(key, request, stamp, wait)
        claimed_at = stamp_time(now, "now")
        return await claim_waiting(
            lambda: self._run(self._sql.claim, key, request, stamp, claimed_at),
            lambda: self._released,
            wait,
        )

    async def mark_sending(
        self,
        key: str,
        sent_at: dt.datetime,
        *,
        sent_server: dt.datetime | None = None,
        sent_uncertainty: float | None = None,
    ) -> None:
        """INTENT -> SENDING, durably, immediately before the create's bytes leave.

        ``sent_server`` is the same moment on the server's clock, when the session knew it
        (to within ``sent_uncertainty`` seconds): a look-up after a crash places the send
        with it, whatever this machine's clock did since.
        """
        check_key(key)
        stamp = stamp_time(sent_at, "sent_at")
        server = None if sent_server is None else stamp_time(sent_server, "sent_server")
        if server is not None and (
            isinstance(sent_uncertainty, bool)
            or not isinstance(sent_uncertainty, (int, float))
            or not sent_uncertainty >= 0
        ):
            raise ValueError("sent_uncertainty must be a number of seconds >= 0")
        await self._write(
            key,
            "state = 'sending', sent_at = ?, sent_server = ?, sent_uncertainty = ?",
            (stamp, server, None if server is None else float(sent_uncertainty or 0.0)),
            move=MARK_SENDING,
        )

    async def mark_not_sent(self, key: str) -> None:
        """SENDING -> INTENT: the create certainly never reached the server; still owned."""
        check_key(key)
        await self._write(key, "state = 'intent'", (), move=MARK_NOT_SENT)

    async def mark_created(
        self, key: str, task_id: str, task: Mapping[str, Any] | None = None
    ) -> None:
        """SENDING -> CREATED once the reply (or a reconciliation) gave the task id.

        Raises ``ValueError`` if that task id is already recorded for another key.
        """
        check_key(key)
        check_id("task_id", task_id)
        text = task_text(task)
        await self._write(
            key,
            "state = 'created', owner = NULL, task_id = ?, task = ?",
            (task_id, text),
            move=MARK_CREATED,
            task_id=task_id,
        )

    async def mark_refused(self, key: str, reason: str, *, code: int | None = None) -> None:
        """SENDING -> REFUSED: the server answered that it will not make this task.

        For refusals of the request itself (1200/1201 invalid, 1203 no such video, 1300/1301
        policy); a later claim of the key answers REFUSED with ``code`` and ``reason``.
        """
        check_key(key)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise TypeError(f"code must be an int or None, not {type(code).__name__}")
        await self._write(
            key,
            "state = 'refused', owner = NULL, refusal_code = ?, refusal_reason = ?",
            (code, reason),
            move=MARK_REFUSED,
        )

    async def release(self, key: str) -> None:
        """Give up ownership of ``key`` (its state stays); a no-op if not owned here."""
        check_key(key)
        await self._run(self._sql.release, key, shield=True)
        self._wake()

    async def mark_finished(
        self, task_id: str, status: TaskStatus | str, task: Mapping[str, Any] | None = None
    ) -> bool:
        """Record a task's final status; False when no key holds that task id."""
        check_id("task_id", task_id)
        value = TaskStatus(check_id("status", status)).value
        text = task_text(task)
        return await self._run(self._sql.finish, task_id, value, text, shield=True)

    async def get(self, key: str) -> JournalEntry | None:
        """The record of ``key``, or None."""
        check_key(key)
        return await self._run(self._sql.get, key)

    async def pending(self) -> list[JournalEntry]:
        """CREATED entries (a task not yet seen finished) and SENDING ones in doubt (no
        live owner), oldest claim first: what ``session.resume()`` must pick up."""
        return await self._run(self._sql.pending)

    async def entries(self) -> list[JournalEntry]:
        """Every key's record, whatever its state, oldest claim first: what this journal
        made and what it cost (``JournalEntry.task`` of a finished one). A record that
        cannot be read is logged and left out, as by `pending` (`keys` lists it).

        Added in version 0.3.
        """
        return await self._run(self._sql.entries)

    async def keys(self) -> list[str]:
        """Every key recorded, readable or not, oldest claim first.

        Added in version 0.3.
        """
        return await self._run(self._sql.keys)

    async def forget(self, key: str) -> bool:
        """Delete the record of ``key`` (the caller's explicit decision, e.g. after fixing a
        refused request); ``ValueError`` while a live instance owns it."""
        check_key(key)
        forgotten = await self._run(self._sql.forget, key, shield=True)
        if forgotten:
            self._wake()
        return forgotten

    async def settle(self, key: str, task_id: str) -> JournalEntry:
        """Record ``task_id`` as the task of ``key`` (the caller's decision for a key in
        doubt or gone): CREATED, not owned. ``ValueError`` when the key is not journaled,
        is in another state, a live instance (this one included) owns it, or the task id is
        recorded for another key."""
        check_key(key)
        check_id("task_id", task_id)
        entry = await self._run(self._sql.settle, key, task_id, shield=True)
        self._wake()
        return entry

    async def mark_gone(self, task_id: str, reason: str, *, before: dt.datetime) -> str | None:
        """CREATED -> GONE for a key claimed before ``before``: the server does not know its
        task; the key, or None."""
        check_id("task_id", task_id)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        stamp = stamp_time(before, "before")
        return await self._run(self._sql.gone, task_id, reason, stamp, shield=True)

    async def doubts(self, video_id: str) -> list[JournalEntry]:
        """Every SENDING entry for ``video_id``, whoever owns it: creates in doubt that a
        look-up must not take a task from."""
        check_video(video_id)
        return await self._run(self._sql.doubts, video_id)

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        ids = list(dict.fromkeys(task_ids))
        return await self._run(self._sql.keys_of, ids) if ids else {}

    # -- off the event loop ---------------------------------------------------------------

    async def _run(self, function: Callable[..., _T], *args: Any, shield: bool = False) -> _T:
        """Run ``function`` in a worker thread, one at a time; ``shield``: even when the
        caller is cancelled (a write called from a ``finally`` must still happen)."""
        if self._state != _OPEN:
            self._check_open()
        if not shield:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        # Returned after the scope: mypy reads a return inside it as possibly missing.
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        return result  # noqa: RET504  (see above)

    async def _write(
        self,
        key: str,
        assignments: str,
        values: tuple[Any, ...],
        *,
        move: Move,
        task_id: str | None = None,
    ) -> None:
        """One owned transition, shielded: it completes even in a cancelled ``finally``."""
        await self._run(self._sql.move, key, move, assignments, values, task_id, shield=True)
        if move.releases:
            self._wake()

    def _wake(self) -> None:
        if self._released is not None:
            self._released.set()
            self._released = anyio.Event()

    def _check_open(self) -> None:
        if self._state == _UNOPENED:
            raise RuntimeError("open the journal first: 'async with SQLiteJournal(path)'")
        if self._state == _CLOSED:
            raise RuntimeError("the journal is closed")
