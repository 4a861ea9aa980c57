"""Where one create stands, and the creates of a session that others' look-ups must respect.

A create is *in doubt* while its request may have left and no reply was read
(``docs/concepts.md``, "How an unknown outcome is reconciled"). A look-up for it must not
take a task that another create of the session made or may have made: `Attempts` keeps
those (the tasks made or claimed, the creates on the wire, the ones left in doubt).
"""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import anyio

from .models import TaskFamily

if TYPE_CHECKING:
    from ._clock import ServerClock
    from .errors import KlingError
    from .models import Task

__all__ = [
    "NEVER",
    "STAMP_PREFIX",
    "Attempts",
    "CallbackSlot",
    "CreateAttempt",
    "CreateRecord",
    "new_stamp",
]

NEVER = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
STAMP_PREFIX = "kling-async-"
"""How the external ids a session stamps on its creates begin (a random id follows)."""


def new_stamp() -> str:
    """A new external id for one create: unique, so a task carrying it is that create's."""
    return f"{STAMP_PREFIX}{uuid.uuid4().hex}"


"""``sent_at`` of a create not sent yet."""
_REMEMBERED_IDS = 10_000  # task ids this session made or claimed, kept to tell them apart
_REMEMBERED_DOUBTS = 1_000  # creates that ended ambiguous: they may still own a listed task


class CallbackSlot:
    """The callback URL a session's receiver issued for one create.

    A keyed create journals the caller's request (its identity); the URL, with its one-time
    token, is added only to what goes on the wire. ``sent`` tells whether it did.
    """

    __slots__ = ("sent", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = False


class CreateRecord(Protocol):
    """Where a keyed create is made durable (the session's journal, for one key)."""

    async def sending(
        self, sent_at: dt.datetime, sent_server: dt.datetime | None, uncertainty: float
    ) -> None:
        """Immediately before the bytes leave (``sent_server``: the same moment on the
        server's clock, if known, to within ``uncertainty`` seconds)."""

    async def not_sent(self) -> None:
        """The try certainly made no task (a refused connection, 1302, 1303, ...)."""

    async def created(self, task: Task) -> None:
        """The task is known (from the reply, or found again)."""

    async def refused(self, error: KlingError) -> None:
        """The server will not make this task (an invalid request, content policy)."""


class CreateAttempt:
    """Where one create stands: is it on the wire, and may it have made a task?"""

    __slots__ = (
        "_off_wire",
        "external_task_id",
        "family",
        "in_doubt",
        "key",
        "on_wire",
        "placed",
        "record",
        "recorded",
        "resolved",
        "sent_at",
        "sent_loop",
        "sent_server",
        "sent_uncertainty",
        "video_id",
        "window_ends",
    )

    def __init__(
        self,
        video_id: str,
        record: CreateRecord | None = None,
        external_task_id: str | None = None,
        key: str | None = None,
        family: TaskFamily = TaskFamily.EXTEND,
    ) -> None:
        self.video_id = video_id
        self.family = family  # a source create's rivals are of its own family
        self.external_task_id = external_task_id
        self.key = key  # the journal's: an earlier try of the same key is no rival
        self.record = record
        self.recorded = False  # the record says "sending" for the current try
        self.sent_at = NEVER  # wall clock, as journaled; compared on the server's clock
        self.sent_loop: float | None = None  # the loop's clock, when this process sent it
        self.sent_server: dt.datetime | None = None  # as journaled, on the server's clock
        self.sent_uncertainty = 0.0
        self.placed = True  # False: sent_at cannot be trusted (the clock was set back)
        self.window_ends = 0.0  # loop clock: the send can no longer make a task after this
        self.on_wire = False  # sent, no reply yet
        self.in_doubt = False  # failed in a way that may hide a task
        self.resolved = False  # its task is known (or it certainly made none)
        self._off_wire: anyio.Event | None = None

    def begin(self) -> None:
        """A new try: nothing sent yet."""
        self.on_wire = self.in_doubt = False

    async def leaving(self, now: float, clock: ServerClock, window: float) -> None:
        """The request leaves at ``now`` (the loop's clock): made durable first (journal:
        INTENT -> SENDING); after ``window`` seconds it can no longer make a task."""
        if self.record is not None:
            wall = dt.datetime.now(dt.timezone.utc)
            uncertainty = clock.uncertainty.total_seconds()
            await self.record.sending(wall, clock.to_server(wall), uncertainty)
            self.recorded = True
        self.sent_at = dt.datetime.now(dt.timezone.utc)
        self.sent_loop = now
        self.window_ends = now + window
        self.on_wire = True

    def take_off_wire(self) -> None:
        """The reply came (or the request failed): another look-up waiting on it may go on."""
        self.on_wire = False
        if self._off_wire is not None:
            self._off_wire.set()
            self._off_wire = None

    def off_wire(self) -> anyio.Event:
        """Set once the reply came (or the request failed)."""
        if self._off_wire is None:
            self._off_wire = anyio.Event()
            if not self.on_wire:
                self._off_wire.set()
        return self._off_wire

    @property
    def doubtful(self) -> bool:
        """Whether a task may exist that the caller has not been told of."""
        return self.on_wire or self.in_doubt


class Attempts:
    """The creates of one session that a look-up must respect: tasks made or claimed here
    (never another create's candidate), creates under way, and creates left in doubt (they
    may still own a listed task)."""

    __slots__ = ("_active", "_doubts", "_known")

    def __init__(self) -> None:
        # Ids made or claimed here, oldest first, each with the journal key it was made for
        # (None: no key), so that a key's look-up never counts its own task (made, then not
        # recorded) as someone else's. An OrderedDict: dropping the oldest of a plain dict
        # scans every slot deleted before it.
        self._known: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._active: set[CreateAttempt] = set()
        self._doubts: collections.deque[CreateAttempt] = collections.deque(
            maxlen=_REMEMBERED_DOUBTS
        )

    def remember(self, task_id: str, key: str | None = None) -> None:
        """A task this session made or claimed (for journal ``key``)."""
        known = self._known
        known[task_id] = key
        if len(known) > _REMEMBERED_IDS:
            known.popitem(last=False)

    def claimed(self, key: str | None) -> set[str]:
        """The task ids made or claimed here for anything but ``key``."""
        return {task_id for task_id, owner in self._known.items() if key is None or owner != key}

    def start(self, attempt: CreateAttempt) -> None:
        """``attempt`` is under way."""
        self._active.add(attempt)

    def end(self, attempt: CreateAttempt) -> None:
        """``attempt`` is over (its task known, or raised)."""
        self._active.discard(attempt)

    def left_in_doubt(self, attempt: CreateAttempt) -> None:
        """``attempt`` ended without its outcome: a rival for other look-ups."""
        self._doubts.append(attempt)

    def settled(self, key: str | None) -> None:
        """Earlier tries of journal ``key`` (a look-up cut short) are no longer in doubt."""
        if key is not None:
            for other in self._doubts:
                if other.key == key:
                    other.resolved = True

    def rivals(self, attempt: CreateAttempt) -> Iterable[CreateAttempt]:
        """Other creates of this session for the same video (and family) whose outcome is
        (or was left) unknown; an earlier try of the same journal key is none."""
        for other in (*self._active, *self._doubts):
            if (
                other is not attempt
                and (attempt.key is None or other.key != attempt.key)
                and other.video_id == attempt.video_id
                and other.family is attempt.family
                and other.doubtful
                and not other.resolved
            ):
                yield other
