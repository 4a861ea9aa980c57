"""The create journal: a crash never costs a paid task.

A keyed create is recorded durably *before* its bytes leave and again once its task id is
known, so that a restarted process (or another one sharing the file) neither pays twice nor
loses a task. This module holds the journal's vocabulary (`EntryState`, `ClaimOutcome`,
`JournalEntry`, `Claim`), the `Journal` protocol the session talks to, and the checks and
request identity (`canonical`, `fingerprint`) that every implementation shares. The rules of
the state machine are pure functions in ``_journal_rules``; `SQLiteJournal`
(``_sqlite_journal``) implements the protocol with the standard library's ``sqlite3``. A
shared store (Redis, Postgres) can implement the same protocol without touching the session.

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

Added in version 0.2.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from ._journal_requests import canonical, fingerprint
from ._source_requests import CreateRequest, ImageToVideo, TextToVideo
from .errors import JournalError
from .models import ExtendRequest, TaskStatus

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "Claim",
    "ClaimOutcome",
    "EntryState",
    "Journal",
    "JournalEntry",
    "JournalError",
    "canonical",
    "check_claim",
    "check_id",
    "check_key",
    "check_video",
    "fingerprint",
]


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
    request: CreateRequest
    """The request as sent (or to be sent), the session's stamped external id included: an
    `ExtendRequest`, `TextToVideo` or `ImageToVideo` (whose base64 images, read back from
    the journal, are digests: see docs/concepts.md, "Keys for source videos")."""
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
    """The last task object recorded for it (Kling's task JSON), if the session gave one: a
    session records a finished task's, cost included, when a wait sees it finish."""
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
    def request(self) -> CreateRequest:
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
    Writes complete even when the caller is cancelled (they are called from ``finally``
    blocks); a record that cannot be read, or a store that fails, raises `JournalError`
    (with ``key`` set when one record is at fault). The transitions each implementation
    must keep are the pure rules of ``_journal_rules``.
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
        """SENDING -> REFUSED: the server answered that it will not make this task.

        For refusals of the request itself (1200/1201 invalid, 1203 no such video, 1300/1301
        policy); a later claim of the key answers REFUSED with ``code`` and ``reason``.
        """
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
        look-up must not take a task from. ``""`` gives the source creates (text-to-video,
        image-to-video) in doubt, which are of no video."""
        ...

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        ...


# -- argument checks ----------------------------------------------------------------------


def check_key(key: object) -> str:
    """``key`` if it is a non-empty str; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    return key


def check_id(name: str, value: object) -> str:
    """``value`` (the argument ``name``) if it is a str with more than blanks in it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def check_video(video_id: object) -> str:
    """``video_id`` of `Journal.doubts`: a str, empty for the source creates."""
    if not isinstance(video_id, str):
        raise TypeError(f"video_id must be a str, not {type(video_id).__name__}")
    return video_id


def check_claim(key: object, request: object, stamp: object, wait: object) -> None:
    """The arguments of `Journal.claim`, checked before any I/O (TypeError or ValueError)."""
    check_key(key)
    if not isinstance(request, (ExtendRequest, TextToVideo, ImageToVideo)):
        raise TypeError(
            "request must be an ExtendRequest, a TextToVideo or an ImageToVideo, "
            f"not {type(request).__name__}"
        )
    if stamp is not None:
        check_id("stamp", stamp)
        if request.external_task_id is not None:
            raise ValueError("a request with its own external_task_id is not stamped")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
        raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
