"""The create journal: a crash never costs a paid task.

A keyed create is recorded durably *before* its bytes leave and again once its task id is
known, so that a restarted process (or another one sharing the file) neither pays twice nor
loses a task. `Journal` is the protocol the session talks to; `SQLiteJournal` implements it
with the standard library's ``sqlite3``. A shared store (Redis, Postgres) can implement the
same protocol without touching the session.

The states of one key (``owner`` is the journal instance creating it right now, or nobody)::

    claim ─► INTENT ──mark_sending──► SENDING ──mark_created──► CREATED ──mark_finished──► FINISHED
               ▲                         │ │                     │
               └──────mark_not_sent──────┘ └──mark_refused──►    └──mark_gone──► GONE
                                               REFUSED

    settle(key, task_id), the caller's decision, takes any state but a live owner's to
    CREATED; forget(key) deletes the record.

    claim() of an existing key, by state and owner:
      CREATED, FINISHED          EXISTING  send nothing: return the recorded task
      REFUSED                    REFUSED   send nothing: the server refused this request
      GONE                       GONE      send nothing: its task vanished on the server
      INTENT/SENDING, live owner BUSY      another create is in progress (claim(wait=) waits)
      INTENT, no live owner      FRESH     nothing left the machine: taken over, may send
      SENDING, no live owner     IN_DOUBT  taken over: reconcile first, never resend blindly

A FRESH or IN_DOUBT claim makes this instance the key's owner until `mark_created`,
`mark_refused`, `release` or `aclose` (or the process's death) ends it; the session calls
``release(key)`` in a ``finally`` so that a create that gives up leaves no owner behind.
Every write is shielded from cancellation, so it may be called from such a ``finally``.
``claim`` is not: cancelled before its transaction it records nothing, and once that runs
its result is returned and the cancellation lands at the caller's next ``await`` (so the
session enters its ``try`` right after ``claim`` returns, with no ``await`` between).

**Owner liveness.** Each open `SQLiteJournal` holds an exclusive ``fcntl.flock`` on its own
lock file, ``<journal>.owners/<token>.lock``, named by a random 128-bit token; records carry
the token of the instance creating them. An owner is alive while its lock is held: testing
takes the lock without blocking, which fails exactly while the holder lives. The kernel drops
the lock when the process dies, ``kill -9`` included, so no timeout or PID guess is involved
(and a reused PID cannot fool it). The file is made under a temporary name and renamed once
locked, so every ``.lock`` name is locked from birth; dead owners' files are removed when
found. ``flock`` locks belong to the open file, so two instances in one process are told apart
too; a child made by ``fork`` shares its parent's lock until it exits. Local file systems
only (``flock`` over NFS is not reliable). Where ``fcntl`` is missing (Windows) an owner
counts as alive while its lock file exists: a crash then leaves the file behind, and its keys
stay BUSY until that file is deleted by hand (`SQLiteJournal.owner_file` names it).

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

Added in version 0.2.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
import attrs

from .errors import InvalidArgumentError, JournalError
from .models import ExtendRequest, TaskStatus

try:
    import fcntl
except ImportError:  # Windows: liveness degrades to "the lock file exists" (see above)
    _fcntl: Any = None
else:
    _fcntl = fcntl

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "Claim",
    "ClaimOutcome",
    "EntryState",
    "Journal",
    "JournalEntry",
    "JournalError",
    "SQLiteJournal",
]

logger = logging.getLogger("kling_async")

SCHEMA_VERSION = 2  # PRAGMA user_version of the files this module writes (it reads 1 and 2)
APPLICATION_ID = 0x4B4C4A31  # PRAGMA application_id: "KLJ1", marks a kling_async journal
_T = TypeVar("_T")
_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"
_TOKEN = re.compile(r"[0-9a-f]{32}")
_LOCK_SUFFIX = ".lock"
_FIRST_POLL, _MAX_POLL = 0.005, 0.1  # waiting for another process's create to end


class EntryState(str, enum.Enum):
    """Where one key's create stands (see the module docstring for the transitions)."""

    INTENT = "intent"
    """Claimed; nothing has left the machine."""
    SENDING = "sending"
    """The create may have left: its outcome is unknown until a reply or a reconciliation."""
    CREATED = "created"
    """The task exists; ``task_id`` is known."""
    REFUSED = "refused"
    """The server certainly refused this request (e.g. 1301 content policy); no task."""
    FINISHED = "finished"
    """A wait saw the task finish (``succeed`` or ``failed``)."""
    GONE = "gone"
    """The server no longer knows the recorded task (404/1203): nothing to wait for."""


_WITH_TASK = (EntryState.CREATED, EntryState.FINISHED, EntryState.GONE)


class ClaimOutcome(enum.Enum):
    """What `Journal.claim` found, and so what the session must do next."""

    FRESH = "fresh"
    """This instance owns the key and may send the create (``claim.request``)."""
    EXISTING = "existing"
    """A task was made for this key already: return its handle, send nothing."""
    IN_DOUBT = "in_doubt"
    """A create was sent and never answered: this instance owns the key and must reconcile
    (by ``request.external_task_id``, else the list, from ``entry.sent_at``); never resend."""
    BUSY = "busy"
    """A live journal instance is creating this key now: do nothing with it."""
    REFUSED = "refused"
    """The server refused this very request before: send nothing, report it."""
    GONE = "gone"
    """The task made for this key vanished on the server: send nothing until it is
    forgotten (``forget``) or settled to another task (``settle``)."""


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One key's record as the journal holds it."""

    key: str
    request: ExtendRequest
    """The request as sent (or to be sent), the session's stamped external id included."""
    stamped: bool
    """Whether ``request.external_task_id`` is the session's stamp, not the caller's."""
    state: EntryState
    claimed_at: dt.datetime
    sent_at: dt.datetime | None = None
    sent_server: dt.datetime | None = None
    """The send on the server's clock, when the session knew its offset."""
    sent_uncertainty: float | None = None
    """How far ``sent_server`` may be off, in seconds."""
    task_id: str | None = None
    task: Mapping[str, Any] | None = None
    """The last task object recorded for it (JSON), if the session gave one."""
    status: TaskStatus | None = None
    """The final status once FINISHED."""
    refusal_code: int | None = None
    refusal_reason: str | None = None
    """Why the server refused the request (REFUSED), or why the task is GONE."""
    owner: str | None = None
    """The token of the instance creating this key right now (on BUSY: the live one), or None."""

    @property
    def external_task_id(self) -> str | None:
        """The external id the create carries (caller's or stamped), if any."""
        return self.request.external_task_id


@attrs.frozen(kw_only=True)
class Claim:
    """The answer of `Journal.claim`: an outcome and the key's record after the claim."""

    outcome: ClaimOutcome
    entry: JournalEntry

    @property
    def request(self) -> ExtendRequest:
        """What to send (FRESH) or reconcile (IN_DOUBT): use it, not the caller's request."""
        return self.entry.request

    @property
    def task_id(self) -> str | None:
        """The recorded task id (EXISTING), else None."""
        return self.entry.task_id


@runtime_checkable
class Journal(Protocol):
    """What the session needs from a journal; `SQLiteJournal` is the embedded one.

    Opened by ``async with`` (or ``await journal.__aenter__()``), closed by `aclose`, which is
    idempotent. Keys are non-empty strings. Calls on a closed journal raise ``RuntimeError``;
    a write on a key this instance does not own (a session bug) raises ``RuntimeError`` too.
    """

    async def __aenter__(self) -> Journal: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Release every key this instance owns and close; a second call does nothing."""
        ...

    async def claim(
        self,
        key: str,
        request: ExtendRequest,
        *,
        now: dt.datetime,
        stamp: str | None = None,
        wait: float = 0.0,
    ) -> Claim:
        """Look ``key`` up and record the intent atomically; see `ClaimOutcome`.

        ``request`` is the caller's request; ``stamp`` the external id the session would
        stamp on it (recorded with a new intent only; not part of the request's identity).
        A key recorded for another request raises ``ValueError``. A BUSY key is polled for
        up to ``wait`` seconds before BUSY is returned.
        """
        ...

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
        ...

    async def mark_not_sent(self, key: str) -> None:
        """SENDING -> INTENT: the create certainly never reached the server; still owned."""
        ...

    async def mark_created(
        self, key: str, task_id: str, task: Mapping[str, Any] | None = None
    ) -> None:
        """SENDING -> CREATED once the reply (or a reconciliation) gave the task id.

        Raises ``ValueError`` if that task id is already recorded for another key.
        """
        ...

    async def mark_refused(self, key: str, reason: str, *, code: int | None = None) -> None:
        """SENDING -> REFUSED: the server answered that it will not make this task."""
        ...

    async def release(self, key: str) -> None:
        """Give up ownership of ``key`` (its state stays); a no-op if not owned here."""
        ...

    async def mark_finished(
        self, task_id: str, status: TaskStatus | str, task: Mapping[str, Any] | None = None
    ) -> bool:
        """Record a task's final status; False when no key holds that task id."""
        ...

    async def get(self, key: str) -> JournalEntry | None:
        """The record of ``key``, or None."""
        ...

    async def pending(self) -> list[JournalEntry]:
        """CREATED entries (a task not yet seen finished) and SENDING ones in doubt (no
        live owner), oldest claim first: what ``session.resume()`` must pick up."""
        ...

    async def forget(self, key: str) -> bool:
        """Delete the record of ``key`` (the caller's explicit decision, e.g. after fixing a
        refused request); ``ValueError`` while a live instance owns it."""
        ...

    async def settle(self, key: str, task_id: str) -> JournalEntry:
        """Record ``task_id`` as the task of ``key`` (the caller's decision for a key in
        doubt or gone): CREATED, not owned. ``ValueError`` when the key is not journaled,
        is in another state, a live instance (this one included) owns it, or the task id is
        recorded for another key."""
        ...

    async def mark_gone(self, task_id: str, reason: str, *, before: dt.datetime) -> str | None:
        """CREATED -> GONE for a key claimed before ``before``: the server does not know its
        task; the key, or None."""
        ...

    async def doubts(self, video_id: str) -> list[JournalEntry]:
        """Every SENDING entry for ``video_id``, whoever owns it: creates in doubt that a
        look-up must not take a task from."""
        ...

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        ...


# -- canonical request form ---------------------------------------------------------------


def _canonical(request: ExtendRequest, *, without_external_id: bool = False) -> str:
    """The request as canonical JSON: attrs field names, ``None`` left out, sorted keys."""
    data = attrs.asdict(request, filter=lambda _attribute, value: value is not None)
    if "cfg_scale" in data:
        data["cfg_scale"] = float(data["cfg_scale"])  # 1 and 1.0 are the same request
    if without_external_id:
        data.pop("external_task_id", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _fingerprint(request: ExtendRequest, *, without_external_id: bool = False) -> str:
    canonical = _canonical(request, without_external_id=without_external_id)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _decode_request(text: str) -> ExtendRequest:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError(f"the request is a JSON {type(data).__name__}, not an object")
    return ExtendRequest(**data)


def _stamp_time(value: dt.datetime, name: str) -> str:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (e.g. datetime.now(timezone.utc))")
    return value.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def _read_time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def _task_text(task: Mapping[str, Any] | None) -> str | None:
    if task is None:
        return None
    if not isinstance(task, Mapping):
        raise TypeError(f"task must be a mapping (the task's JSON), not {type(task).__name__}")
    return json.dumps(dict(task), separators=(",", ":"), ensure_ascii=False)


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    return key


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


# -- owner liveness -----------------------------------------------------------------------


class _Owners:
    """This instance's owner lock, and the liveness test of other owners' locks."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.token = ""
        self._fd: int | None = None
        self._dead: set[str] = set()  # a dead owner never comes back

    def path(self, token: str) -> pathlib.Path:
        return self.directory / f"{token}{_LOCK_SUFFIX}"

    def acquire(self) -> None:
        """Make and lock this instance's file: locked under a temporary name, then renamed,
        so that a ``.lock`` name is never seen unlocked while its owner lives."""
        for _ in range(100):
            token = secrets.token_hex(16)
            temporary = self.directory / f".{token}.tmp"
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                continue  # another instance removed the empty directory just now
            try:
                if _fcntl is not None:
                    _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.rename(temporary, self.path(token))
            except OSError as error:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                if isinstance(error, (BlockingIOError, FileNotFoundError)):
                    continue  # a sweep held or removed the temporary file: try a new token
                raise
            self.token, self._fd = token, fd
            return
        raise JournalError(f"could not create an owner lock file in {self.directory}")

    def alive(self, token: str) -> bool:
        """Whether the instance ``token`` still holds its lock (this one always does)."""
        if token == self.token:
            return True
        if token in self._dead or not _TOKEN.fullmatch(token):
            return False
        if self._probe(self.path(token)):
            return True
        self._dead.add(token)
        return False

    def _probe(self, path: pathlib.Path) -> bool:
        """Try the lock: held means alive; taken means dead, and its file is removed."""
        if _fcntl is None:
            return path.exists()
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while we hold its lock: no live owner can own this name
            return False
        finally:
            os.close(fd)

    def sweep(self) -> None:
        """Remove the lock files of owners that died (a crash leaves them behind)."""
        if _fcntl is None:
            return
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.iterdir():
                token = path.name.removesuffix(_LOCK_SUFFIX)
                if path.name.endswith(_LOCK_SUFFIX) and token != self.token:
                    self._probe(path)

    def release(self) -> None:
        """Unlock and remove this instance's file, and the directory if it is now empty."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(self.token))
        os.close(fd)  # closing drops the flock
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)  # fails, as it should, while other owners live


# -- the SQLite journal -------------------------------------------------------------------


def _table(name: str) -> str:
    return f"""
CREATE TABLE {name} (
    key            TEXT PRIMARY KEY NOT NULL,
    fingerprint    TEXT NOT NULL,     -- sha256 of the caller's request, stamp left out
    request        TEXT NOT NULL,     -- canonical JSON of the request as sent
    stamped        INTEGER NOT NULL,  -- 1: request's external_task_id is the session's stamp
    external_task_id TEXT,
    state          TEXT NOT NULL
        CHECK (state IN ('intent', 'sending', 'created', 'refused', 'finished', 'gone')),
    owner          TEXT,              -- token of the instance creating it now, or NULL
    claimed_at     TEXT NOT NULL,     -- ISO 8601, UTC
    sent_at        TEXT,
    sent_server    TEXT,              -- the same moment on the server's clock, if known
    sent_uncertainty REAL,            -- seconds sent_server may be off
    task_id        TEXT,
    task           TEXT,              -- the task object's JSON, when given
    status         TEXT,
    refusal_code   INTEGER,
    refusal_reason TEXT,              -- why it was refused, or why its task is gone
    video_id       TEXT NOT NULL DEFAULT ''  -- the request's, to find rivals in doubt
) WITHOUT ROWID"""


_INDEXES = (
    "CREATE INDEX creates_task_id ON creates (task_id) WHERE task_id IS NOT NULL",
    "CREATE INDEX creates_open ON creates (state) WHERE state IN ('sending', 'created')",
    "CREATE INDEX creates_owner ON creates (owner) WHERE owner IS NOT NULL",
    "CREATE INDEX creates_doubts ON creates (video_id) WHERE state = 'sending'",
)
_V1_COLUMNS = (
    "key, fingerprint, request, stamped, external_task_id, state, owner, claimed_at, sent_at,"
    " task_id, task, status, refusal_code, refusal_reason"
)
_COLUMNS = (
    "key, request, stamped, state, owner, claimed_at, sent_at, sent_server, sent_uncertainty,"
    " task_id, task, status,"
    " refusal_code, refusal_reason, fingerprint, video_id"
)


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
        self._synchronous = synchronous
        self._busy_timeout = float(busy_timeout)
        self._owners = _Owners(self._path.with_name(self._path.name + ".owners"))
        self._state = _UNOPENED
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        self._released: anyio.Event | None = None  # set when a key owned here is let go
        self._identity = (0, 0)  # st_dev, st_ino of the file opened

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> SQLiteJournal:
        if self._state != _UNOPENED:
            raise RuntimeError(f"a journal can be opened once; this one is {self._state}")
        self._limiter = anyio.CapacityLimiter(1)
        self._released = anyio.Event()
        with anyio.CancelScope(shield=True):  # an open cut short would leak the lock file
            await anyio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
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
            await anyio.to_thread.run_sync(self._close_sync, limiter=self._limiter)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_connection", None) is not None:
            _warn(
                f"{self!r} was never closed; use 'async with SQLiteJournal(...)' or aclose()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            with contextlib.suppress(Exception):
                self._close_sync()

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
        request: ExtendRequest,
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
        _check_key(key)
        if not isinstance(request, ExtendRequest):
            raise TypeError(f"request must be an ExtendRequest, not {type(request).__name__}")
        if stamp is not None:
            _check_id("stamp", stamp)
            if request.external_task_id is not None:
                raise ValueError("a request with its own external_task_id is not stamped")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
        claimed_at = _stamp_time(now, "now")
        fingerprint = _fingerprint(request)
        bare = (
            _fingerprint(request, without_external_id=True)
            if request.external_task_id is not None
            else None
        )
        deadline = time.monotonic() + wait
        delay = _FIRST_POLL
        while True:
            released = self._released
            claim = await self._run(
                self._claim_sync, key, request, fingerprint, bare, stamp, claimed_at
            )
            remaining = deadline - time.monotonic()
            if claim.outcome is not ClaimOutcome.BUSY or remaining <= 0:
                return claim
            assert released is not None
            with anyio.move_on_after(min(delay, remaining)):
                await released.wait()
            delay = min(delay * 2, _MAX_POLL)

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
        _check_key(key)
        stamp = _stamp_time(sent_at, "sent_at")
        server = None if sent_server is None else _stamp_time(sent_server, "sent_server")
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
            from_state="intent",
            what="mark_sending",
        )

    async def mark_not_sent(self, key: str) -> None:
        """SENDING -> INTENT: the create certainly never reached the server; still owned."""
        _check_key(key)
        await self._write(key, "state = 'intent'", (), from_state="sending", what="mark_not_sent")

    async def mark_created(
        self, key: str, task_id: str, task: Mapping[str, Any] | None = None
    ) -> None:
        """SENDING -> CREATED once the reply (or a reconciliation) gave the task id.

        Raises ``ValueError`` if that task id is already recorded for another key.
        """
        _check_key(key)
        _check_id("task_id", task_id)
        text = _task_text(task)
        await self._write(
            key,
            "state = 'created', owner = NULL, task_id = ?, task = ?",
            (task_id, text),
            from_state="sending",
            what="mark_created",
            task_id=task_id,
        )

    async def mark_refused(self, key: str, reason: str, *, code: int | None = None) -> None:
        """SENDING -> REFUSED: the server answered that it will not make this task.

        For refusals of the request itself (1200/1201 invalid, 1203 no such video, 1300/1301
        policy); a later claim of the key answers REFUSED with ``code`` and ``reason``.
        """
        _check_key(key)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise TypeError(f"code must be an int or None, not {type(code).__name__}")
        await self._write(
            key,
            "state = 'refused', owner = NULL, refusal_code = ?, refusal_reason = ?",
            (code, reason),
            from_state="sending",
            what="mark_refused",
        )

    async def release(self, key: str) -> None:
        """Give up ownership of ``key`` (its state stays); a no-op if not owned here."""
        _check_key(key)
        await self._run(self._release_sync, key, shield=True)
        self._wake()

    async def mark_finished(
        self, task_id: str, status: TaskStatus | str, task: Mapping[str, Any] | None = None
    ) -> bool:
        """Record a task's final status; False when no key holds that task id."""
        _check_id("task_id", task_id)
        value = TaskStatus(_check_id("status", status)).value
        text = _task_text(task)
        return await self._run(self._finish_sync, task_id, value, text, shield=True)

    async def get(self, key: str) -> JournalEntry | None:
        """The record of ``key``, or None."""
        _check_key(key)
        return await self._run(self._get_sync, key)

    async def pending(self) -> list[JournalEntry]:
        """CREATED entries (a task not yet seen finished) and SENDING ones in doubt (no
        live owner), oldest claim first: what ``session.resume()`` must pick up."""
        return await self._run(self._pending_sync)

    async def forget(self, key: str) -> bool:
        """Delete the record of ``key`` (the caller's explicit decision, e.g. after fixing a
        refused request); ``ValueError`` while a live instance owns it."""
        _check_key(key)
        forgotten = await self._run(self._forget_sync, key, shield=True)
        if forgotten:
            self._wake()
        return forgotten

    async def settle(self, key: str, task_id: str) -> JournalEntry:
        """Record ``task_id`` as the task of ``key`` (the caller's decision for a key in
        doubt or gone): CREATED, not owned. ``ValueError`` when the key is not journaled,
        is in another state, a live instance (this one included) owns it, or the task id is
        recorded for another key."""
        _check_key(key)
        _check_id("task_id", task_id)
        entry = await self._run(self._settle_sync, key, task_id, shield=True)
        self._wake()
        return entry

    async def mark_gone(self, task_id: str, reason: str, *, before: dt.datetime) -> str | None:
        """CREATED -> GONE for a key claimed before ``before``: the server does not know its
        task; the key, or None."""
        _check_id("task_id", task_id)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        stamp = _stamp_time(before, "before")
        return await self._run(self._gone_sync, task_id, reason, stamp, shield=True)

    async def doubts(self, video_id: str) -> list[JournalEntry]:
        """Every SENDING entry for ``video_id``, whoever owns it: creates in doubt that a
        look-up must not take a task from."""
        _check_id("video_id", video_id)
        return await self._run(self._doubts_sync, video_id)

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        ids = list(dict.fromkeys(task_ids))
        return await self._run(self._keys_of_sync, ids) if ids else {}

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
        from_state: str,
        what: str,
        task_id: str | None = None,
    ) -> None:
        """One owned transition, shielded: it completes even in a cancelled ``finally``."""
        await self._run(
            self._transition_sync, key, assignments, values, from_state, what, task_id, shield=True
        )
        if "owner = NULL" in assignments:
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

    @contextlib.contextmanager
    def _db(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, in a ``BEGIN IMMEDIATE`` transaction for writes;
        sqlite3 failures come out as `JournalError`."""
        with self._lock:
            connection = self._connection
            if connection is None:
                raise RuntimeError("the journal is closed")
            try:
                self._check_file()
                if not write:
                    yield connection
                    return
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise JournalError(f"journal {self._path}: {error}") from error

    def _check_file(self) -> None:
        """Refuse to write once the file at the path is not the file this instance opened
        (deleted or replaced while open): what it records would be lost with it."""
        try:
            stat = os.stat(self._path)
            same = (stat.st_dev, stat.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            raise JournalError(
                f"journal {self._path} was deleted or replaced while open: nothing more can "
                "be recorded in it (what it held is lost; a re-run cannot tell which keys "
                "were paid for)"
            )

    def _open_sync(self) -> None:
        try:
            connection = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # one connection, used by one thread at a time
            )
        except sqlite3.Error as error:
            raise JournalError(f"cannot open the journal {self._path}: {error}") from error
        try:
            connection.row_factory = sqlite3.Row
            self._configure(connection)
            try:
                self._owners.acquire()
                self._owners.sweep()
            except OSError as error:
                raise JournalError(f"cannot make the journal's owner lock file: {error}") from error
            stat = os.stat(self._path)
        except BaseException:
            connection.close()
            self._owners.release()
            raise
        self._identity = (stat.st_dev, stat.st_ino)
        self._connection = connection

    def _configure(self, connection: sqlite3.Connection) -> None:
        """WAL, the sync level, and the schema: created on a new file, checked on an old one."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.DatabaseError as error:
                # Switching a new file to WAL needs a moment alone with it; a busy file
                # is waited for, anything else is not a journal this code can use.
                busy = isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
                if not busy or time.monotonic() > deadline:
                    raise JournalError(
                        f"{self._path} cannot be used as a journal: {error}"
                    ) from error
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise JournalError(f"{self._path}: WAL mode is not available (journal_mode {mode})")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._check_schema(connection)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise JournalError(f"{self._path} cannot be used as a journal: {error}") from error

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        application = connection.execute("PRAGMA application_id").fetchone()[0]
        if version == 0 and application == 0:
            tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise JournalError(
                    f"{self._path} is an SQLite database but not a kling_async journal"
                )
            connection.execute(_table("creates"))  # not executescript(): it would COMMIT
            for statement in _INDEXES:
                connection.execute(statement)
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if application != APPLICATION_ID:
            raise JournalError(f"{self._path} is an SQLite database but not a kling_async journal")
        if version == 1:
            self._migrate_from_1(connection)
            return
        if version != SCHEMA_VERSION:
            newer = "a newer" if version > SCHEMA_VERSION else "an older"
            raise JournalError(
                f"{self._path} is a journal of schema version {version}, written by {newer} "
                f"kling_async; this version reads version {SCHEMA_VERSION} only"
            )

    def _migrate_from_1(self, connection: sqlite3.Connection) -> None:
        """Version 1 -> 2 (the GONE state and a ``video_id`` column), in the open transaction."""
        connection.execute(_table("creates_v2"))
        connection.execute(
            f"INSERT INTO creates_v2 ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM creates"
        )
        for key, request in connection.execute("SELECT key, request FROM creates").fetchall():
            try:
                video_id = str(json.loads(request).get("video_id", ""))
            except (ValueError, AttributeError):
                continue  # an unreadable record stays unreadable, and is reported when read
            connection.execute("UPDATE creates_v2 SET video_id = ? WHERE key = ?", (video_id, key))
        connection.execute("DROP TABLE creates")
        connection.execute("ALTER TABLE creates_v2 RENAME TO creates")
        for statement in _INDEXES:
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        logger.info("journal %s: upgraded to schema version %d", self._path, SCHEMA_VERSION)

    def _close_sync(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            try:
                # Keys this instance was creating are let go: an INTENT is free to take, a
                # SENDING becomes in doubt for the next claim.
                connection.execute(
                    "UPDATE creates SET owner = NULL WHERE owner = ?", (self._owners.token,)
                )
            except sqlite3.Error as error:
                logger.warning("journal %s: could not release owned keys: %s", self._path, error)
            finally:
                connection.close()
                self._owners.release()

    def _entry(self, row: sqlite3.Row, *, owner: str | None = None) -> JournalEntry:
        """The record in ``row``; `JournalError` naming its key when it cannot be read."""
        key = row["key"]
        try:
            task = row["task"]
            status = row["status"]
            state = EntryState(row["state"])
            task_id = row["task_id"]
            if state in _WITH_TASK and (not isinstance(task_id, str) or not task_id):
                raise ValueError(f"it is {state.value} without a task id")
            entry = JournalEntry(
                key=key,
                request=_decode_request(row["request"]),
                stamped=bool(row["stamped"]),
                state=state,
                claimed_at=dt.datetime.fromisoformat(row["claimed_at"]),
                sent_at=_read_time(row["sent_at"]),
                sent_server=_read_time(row["sent_server"]),
                sent_uncertainty=row["sent_uncertainty"],
                task_id=task_id,
                task=None if task is None else json.loads(task),
                status=None if status is None else TaskStatus(status),
                refusal_code=row["refusal_code"],
                refusal_reason=row["refusal_reason"],
                owner=row["owner"] if owner is None else owner,
            )
            if entry.claimed_at.tzinfo is None:
                raise ValueError("its claim time has no time zone")
        except (ValueError, TypeError, KeyError, AttributeError, InvalidArgumentError) as error:
            raise JournalError(
                f"journal {self._path}: the record cannot be read ({error})", key=key
            ) from error
        return entry

    def _recorded_request(self, row: sqlite3.Row) -> ExtendRequest:
        """The request of ``row``, or `JournalError` naming its key."""
        try:
            return _decode_request(row["request"])
        except (ValueError, TypeError, InvalidArgumentError) as error:
            raise JournalError(
                f"journal {self._path}: the record's request cannot be read ({error})",
                key=row["key"],
            ) from error

    def _claim_sync(
        self,
        key: str,
        request: ExtendRequest,
        fingerprint: str,
        bare: str | None,
        stamp: str | None,
        claimed_at: str,
    ) -> Claim:
        token = self._owners.token
        with self._db(write=True) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                sent = request if stamp is None else attrs.evolve(request, external_task_id=stamp)
                db.execute(
                    "INSERT INTO creates (key, fingerprint, request, stamped, external_task_id,"
                    " state, owner, claimed_at, video_id)"
                    " VALUES (?, ?, ?, ?, ?, 'intent', ?, ?, ?)",
                    (
                        key,
                        fingerprint,
                        _canonical(sent),
                        stamp is not None,
                        sent.external_task_id,
                        token,
                        claimed_at,
                        sent.video_id,
                    ),
                )
                return Claim(
                    outcome=ClaimOutcome.FRESH,
                    entry=JournalEntry(
                        key=key,
                        request=sent,
                        stamped=stamp is not None,
                        state=EntryState.INTENT,
                        claimed_at=dt.datetime.fromisoformat(claimed_at),
                        owner=token,
                    ),
                )
            # The record's own stamp is not part of the request's identity: a request that
            # carries it (a resume claiming entry.request) matches as the bare request.
            recorded = self._recorded_request(row)
            via_stamp = (
                bool(row["stamped"])
                and bare is not None
                and request.external_task_id == recorded.external_task_id
            )
            if row["fingerprint"] != (bare if via_stamp else fingerprint):
                raise ValueError(
                    f"key {key!r} is journaled for another request (video_id "
                    f"{recorded.video_id!r}, claimed {row['claimed_at']}); a key names one "
                    "request: use a new key"
                )
            entry = self._entry(row)
            state = entry.state
            if state in (EntryState.CREATED, EntryState.FINISHED):
                return Claim(outcome=ClaimOutcome.EXISTING, entry=entry)
            if state is EntryState.REFUSED:
                return Claim(outcome=ClaimOutcome.REFUSED, entry=entry)
            if state is EntryState.GONE:
                return Claim(outcome=ClaimOutcome.GONE, entry=entry)
            owner = row["owner"]
            if owner is not None and self._owners.alive(owner):
                return Claim(outcome=ClaimOutcome.BUSY, entry=self._entry(row))
            if state is EntryState.INTENT:
                # Nothing left the machine: take it over with this call's request and stamp
                # (the same request by fingerprint; the stamp may differ, or be gone).
                if via_stamp:
                    sent, stamped = request, True
                elif stamp is not None:
                    sent, stamped = attrs.evolve(request, external_task_id=stamp), True
                else:
                    sent, stamped = request, False
                db.execute(
                    "UPDATE creates SET owner = ?, claimed_at = ?, request = ?, stamped = ?,"
                    " external_task_id = ? WHERE key = ?",
                    (token, claimed_at, _canonical(sent), stamped, sent.external_task_id, key),
                )
                entry = attrs.evolve(
                    self._entry(row),
                    request=sent,
                    stamped=stamped,
                    claimed_at=dt.datetime.fromisoformat(claimed_at),
                    owner=token,
                )
                return Claim(outcome=ClaimOutcome.FRESH, entry=entry)
            db.execute("UPDATE creates SET owner = ? WHERE key = ?", (token, key))
            return Claim(outcome=ClaimOutcome.IN_DOUBT, entry=self._entry(row, owner=token))

    def _transition_sync(
        self,
        key: str,
        assignments: str,
        values: tuple[Any, ...],
        from_state: str,
        what: str,
        task_id: str | None,
    ) -> None:
        """One guarded UPDATE (the common case: one statement); a miss is explained after."""
        token = self._owners.token
        with self._db(write=True) as db:
            guard = "key = ? AND owner = ? AND state = ?"
            arguments: tuple[Any, ...] = (*values, key, token, from_state)
            if task_id is not None:  # one task is never recorded for two keys
                guard += " AND NOT EXISTS (SELECT 1 FROM creates WHERE task_id = ? AND key != ?)"
                arguments += (task_id, key)
            if db.execute(f"UPDATE creates SET {assignments} WHERE {guard}", arguments).rowcount:
                return
            row = db.execute("SELECT state, owner FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise RuntimeError(f"{what}({key!r}): the key was never claimed")
            if row["owner"] != token:
                raise RuntimeError(f"{what}({key!r}): this journal instance does not own the key")
            if row["state"] != from_state:
                raise RuntimeError(f"{what}({key!r}): the key is {row['state']}, not {from_state}")
            other = db.execute(
                "SELECT key FROM creates WHERE task_id = ? AND key != ?", (task_id, key)
            ).fetchone()
            raise ValueError(f"task {task_id!r} is already journaled for key {other['key']!r}")

    def _release_sync(self, key: str) -> None:
        with self._db(write=True) as db:
            db.execute(
                "UPDATE creates SET owner = NULL WHERE key = ? AND owner = ?",
                (key, self._owners.token),
            )

    def _finish_sync(self, task_id: str, status: str, task: str | None) -> bool:
        with self._db(write=True) as db:
            cursor = db.execute(
                "UPDATE creates SET state = 'finished', status = ?, task = coalesce(?, task)"
                " WHERE task_id = ? AND state IN ('created', 'finished')",
                (status, task, task_id),
            )
            return cursor.rowcount > 0

    def _get_sync(self, key: str) -> JournalEntry | None:
        with self._db(write=False) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            return None if row is None else self._entry(row)

    def _pending_sync(self) -> list[JournalEntry]:
        with self._db(write=False) as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM creates WHERE state IN ('sending', 'created')"
                " ORDER BY claimed_at, key"
            ).fetchall()
            return self._readable(
                row
                for row in rows
                if row["state"] == "created"
                or row["owner"] is None
                or not self._owners.alive(row["owner"])
            )

    def _readable(self, rows: Iterable[sqlite3.Row]) -> list[JournalEntry]:
        """The entries of ``rows``; one that cannot be read is logged and left out, so that
        it does not stop the others (reading its key raises `JournalError`)."""
        entries = []
        for row in rows:
            try:
                entries.append(self._entry(row))
            except JournalError as error:
                logger.error("%s; it is left out (fix it or forget the key)", error)
        return entries

    def _doubts_sync(self, video_id: str) -> list[JournalEntry]:
        with self._db(write=False) as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM creates WHERE state = 'sending' AND video_id = ?",
                (video_id,),
            ).fetchall()
            return self._readable(rows)

    def _keys_of_sync(self, task_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._db(write=False) as db:
            for start in range(0, len(task_ids), 500):  # SQLite caps bound parameters
                chunk = task_ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for task_id, key in db.execute(
                    f"SELECT task_id, key FROM creates WHERE task_id IN ({marks})", chunk
                ):
                    found[task_id] = key
        return found

    def _settle_sync(self, key: str, task_id: str) -> JournalEntry:
        with self._db(write=True) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise ValueError(f"key {key!r} is not in the journal")
            owner = row["owner"]
            if owner is not None and self._owners.alive(owner):
                raise ValueError(f"key {key!r} is being created by a live journal instance")
            if row["state"] not in ("sending", "gone"):
                what = f" (task {row['task_id']})" if row["task_id"] else ""
                raise ValueError(
                    f"key {key!r} is {row['state']}{what}: only a key in doubt (sending) or "
                    "whose task is gone can be settled"
                )
            other = db.execute(
                "SELECT key FROM creates WHERE task_id = ? AND key != ?", (task_id, key)
            ).fetchone()
            if other is not None:
                raise ValueError(f"task {task_id!r} is already journaled for key {other['key']!r}")
            db.execute(
                "UPDATE creates SET state = 'created', owner = NULL, task_id = ?, task = NULL,"
                " status = NULL, refusal_code = NULL, refusal_reason = NULL WHERE key = ?",
                (task_id, key),
            )
            row = db.execute(f"SELECT {_COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            return self._entry(row)

    def _gone_sync(self, task_id: str, reason: str, before: str) -> str | None:
        with self._db(write=True) as db:
            row = db.execute(
                "SELECT key FROM creates WHERE task_id = ? AND state = 'created'"
                " AND claimed_at < ?",
                (task_id, before),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE creates SET state = 'gone', refusal_reason = ? WHERE key = ?",
                (reason, row["key"]),
            )
            return str(row["key"])

    def _forget_sync(self, key: str) -> bool:
        with self._db(write=True) as db:
            row = db.execute("SELECT owner FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            if row["owner"] is not None and self._owners.alive(row["owner"]):
                raise ValueError(f"key {key!r} is being created by a live journal instance")
            db.execute("DELETE FROM creates WHERE key = ?", (key,))
            return True
