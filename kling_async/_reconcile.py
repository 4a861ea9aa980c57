"""Whether a create in doubt made a task: the look-up's rules, pure (values in, values out).

A create is *in doubt* when its request may have left and no reply was read. It is looked
up, never resent blindly (``docs/concepts.md``, "How an unknown outcome is reconciled"):

- a listed task that carries the create's external id is its task, whatever else is listed;
- a task that carries another external id is someone else's; where the server is known to
  keep external ids, a task without one is not this create's either;
- otherwise a task for the same video, not recorded for any other create, made on the
  server's clock between the send (less a generous margin) and the end of the window in
  which the send could still make a task, is a *candidate*;
- the one candidate is taken only when it may have been made after the send (it is not
  older than the send by more than the server clock's uncertainty) and no other create in
  doubt (of this session or of the journal) could have made it; otherwise it cannot be
  told apart;
- no candidate, once a look-up made after the window closed found none, proves the create
  made nothing (it may then be sent again), unless a task for the video was made anywhere
  from `STEP_TOLERANCE` before the window on: a clock stepped since the send (or a gateway's
  ``Date`` on another clock than Kling's) could have misplaced the send, so that is
  ambiguous; before the window closed, the look-up goes on.

Times are on the server's clock (`ServerClock`); a send whose time cannot be placed on it
(no offset known, or the local clock was set back since) can be settled only by its
external id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence

import attrs

from .models import Task

__all__ = [
    "CLOCK_STEP",
    "LOOK_EVERY",
    "Absent",
    "Ambiguous",
    "Doubt",
    "Found",
    "Verdict",
    "candidates",
    "look_delay",
    "must_answer",
    "place",
    "read_next_page",
    "set_back",
    "time_left",
    "verdict",
]

_MILLISECOND = dt.timedelta(milliseconds=1)
LOOK_EVERY = 3.0
"""Seconds between look-ups of a create in doubt while its window is open."""
CLOCK_STEP = 5.0
"""A journaled send this many seconds in the local clock's future: the clock was set back
since, so the send's wall-clock time cannot place it."""
STEP_TOLERANCE = dt.timedelta(hours=1)
"""How far a send may be misplaced (a clock stepped, a gateway's clock) before a task made
for its video no longer stops the verdict "absent": the list is read back this far."""
MARGIN = dt.timedelta(seconds=30)
"""Added to the clocks' uncertainty on both sides of a send's window: a task a wrong
estimate would leave out could be paid for twice, one it takes in is only ambiguous."""


@attrs.frozen(kw_only=True)
class Doubt:
    """One create in doubt, as the rules see it."""

    video_id: str
    """The video an extend is of; empty for a source create, whose family's list it reads."""
    external_task_id: str | None
    sent_at: dt.datetime | None
    """When it was sent, on the server's clock; None when that cannot be told."""
    window: dt.timedelta
    """How long after the send the server may still make its task."""
    uncertainty: dt.timedelta = dt.timedelta(0)
    """How far ``sent_at`` may be from the truth (the server clock's uncertainty)."""

    @property
    def margin(self) -> dt.timedelta:
        """How far around its window a task is still a candidate."""
        return MARGIN + self.uncertainty

    def may_follow(self, task: Task) -> bool:
        """Whether ``task`` may have been made after this create was sent (it is not older
        than the send by more than the server clock's uncertainty)."""
        if self.sent_at is None or task.created_at is None:
            return False
        # The wire's times are whole milliseconds: a task made just after the send may carry
        # the millisecond the send began in.
        return task.created_at + _MILLISECOND >= self.sent_at - self.uncertainty

    @property
    def earliest(self) -> dt.datetime | None:
        """The oldest ``created_at`` its task may carry (server clock)."""
        return None if self.sent_at is None else self.sent_at - self.margin

    @property
    def scan_from(self) -> dt.datetime | None:
        """How far back the list is read: a task for its video since then blocks "absent"."""
        earliest = self.earliest
        return None if earliest is None else earliest - STEP_TOLERANCE

    @property
    def latest(self) -> dt.datetime | None:
        """The newest ``created_at`` its task may carry (server clock)."""
        return None if self.sent_at is None else self.sent_at + self.window + self.margin

    def may_own(self, task: Task, *, keeps_external_ids: bool, near: bool = False) -> bool:
        """Whether ``task`` could be the one this create made (``near``: or was made for its
        video since `scan_from`, which a misplaced send could hide)."""
        if task.external_task_id is not None:
            return task.external_task_id == self.external_task_id
        if self.external_task_id is not None and keeps_external_ids:
            return False  # its task would carry its external id
        if not self.video_id:  # a source create (text/image to video): no parent video
            if task.parent_video is not None:
                return False  # an extend: its family's list holds none, but a gateway may
        elif task.parent_video is None or task.parent_video.id != self.video_id:
            return False
        earliest, latest, scan_from = self.earliest, self.latest, self.scan_from
        if earliest is None or latest is None or scan_from is None or task.created_at is None:
            return True  # cannot be placed in time: it may be
        if near:
            return scan_from <= task.created_at
        return earliest <= task.created_at <= latest


@attrs.frozen
class Found:
    """The create made ``task``."""

    task: Task


@attrs.frozen
class Ambiguous:
    """It cannot be told: ``why``, with the tasks it may have made."""

    why: str
    candidates: tuple[Task, ...] = ()


@attrs.frozen
class Absent:
    """A look-up made after its window closed shows no task it could have made."""


Verdict = Found | Ambiguous | Absent


def candidates(
    doubt: Doubt,
    tasks: Iterable[Task],
    *,
    claimed: Collection[str],
    keeps_external_ids: bool,
) -> list[Task]:
    """The listed tasks ``doubt`` may have made, each once, newest first as listed."""
    seen: set[str] = set()
    found = []
    for task in tasks:
        if task.task_id in seen or task.task_id in claimed:
            continue
        seen.add(task.task_id)
        if doubt.may_own(task, keeps_external_ids=keeps_external_ids):
            found.append(task)
    return found


def verdict(
    doubt: Doubt,
    tasks: Sequence[Task],
    *,
    claimed: Collection[str],
    rivals: Sequence[Doubt],
    keeps_external_ids: bool,
    covered: bool,
    final: bool,
) -> Verdict | None:
    """What the tasks read so far say of ``doubt``, or None to look again later.

    ``tasks`` are the listed tasks read (every one made since the send's window opened when
    ``covered``), ``claimed`` the ids recorded for other creates, ``rivals`` the other creates
    in doubt for the same video. ``final`` asks for an answer now: the window has closed, or
    nothing more can be learned by waiting.
    """
    if doubt.external_task_id is not None:
        for task in tasks:
            if task.external_task_id == doubt.external_task_id:
                return Found(task)
        if keeps_external_ids:
            # Its task would carry its id: the id's look-up was the whole answer.
            return Absent() if final else None
    mine = candidates(doubt, tasks, claimed=claimed, keeps_external_ids=keeps_external_ids)
    contested = [
        rival
        for rival in rivals
        if any(rival.may_own(task, keeps_external_ids=keeps_external_ids) for task in mine)
    ]
    if len(mine) == 1 and not contested and doubt.may_follow(mine[0]):
        return Found(mine[0])
    if not final:
        return None
    if doubt.sent_at is None:
        return Ambiguous(
            "its send cannot be placed on the server's clock (no server time was learned, "
            "or this machine's clock was set back since), so only its external id could "
            "have found it",
            tuple(mine),
        )
    if not covered:
        return Ambiguous(
            "the task list could not be read back to the time it was sent", tuple(mine)
        )
    if not mine:
        near = _near_window(doubt, tasks, claimed, keeps_external_ids)
        if near:
            return Ambiguous(
                "no task for it was made in its window, but one for its video was made "
                "within an hour of it, which a clock stepped since the send (or a gateway's "
                "clock) could have misplaced",
                tuple(near),
            )
        return Absent()
    if len(mine) == 1 and not contested:
        return Ambiguous(
            "the task list shows one task matching this create, made before it was sent (by the "
            f"server's clock, known to within {doubt.uncertainty.total_seconds():.3f} s) "
            "or at a time it does not say",
            tuple(mine),
        )
    if contested:
        return Ambiguous(
            f"the task list shows {len(mine)} task(s) it may have made, which another create "
            "in doubt for the same request may have made as well",
            tuple(mine),
        )
    return Ambiguous(
        f"the task list shows {len(mine)} task(s) matching this create made around its send, "
        "none of which can be told apart as its own",
        tuple(mine),
    )


def _near_window(
    doubt: Doubt, tasks: Sequence[Task], claimed: Collection[str], keeps_external_ids: bool
) -> list[Task]:
    """Unclaimed tasks for the doubt's video made since its `Doubt.scan_from`."""
    return [
        task
        for task in tasks
        if task.task_id not in claimed
        and doubt.may_own(task, keeps_external_ids=keeps_external_ids, near=True)
    ]


def read_next_page(page: Sequence[Task], page_size: int, earliest: dt.datetime) -> bool:
    """Whether the list page after ``page`` (newest first) may hold a task made since
    ``earliest``: the page was full and its oldest task is not older than that."""
    if len(page) < page_size:
        return False
    times = [task.created_at for task in page if task.created_at is not None]
    return not times or min(times) >= earliest


def set_back(sent_at: dt.datetime, now: dt.datetime) -> bool:
    """Whether a send journaled at ``sent_at`` (this machine's wall clock) lies in the future
    of ``now`` by more than `CLOCK_STEP`: the clock was set back since, so ``sent_at``
    cannot place it."""
    return (sent_at - now).total_seconds() > CLOCK_STEP


def place(
    *,
    video_id: str,
    external_task_id: str | None,
    window: dt.timedelta,
    clock_uncertainty: dt.timedelta,
    server_now: dt.datetime | None,
    sent_ago: dt.timedelta | None = None,
    sent_server: dt.datetime | None = None,
    sent_uncertainty: dt.timedelta = dt.timedelta(0),
    sent_wall_on_server: dt.datetime | None = None,
) -> Doubt:
    """A send on the server's clock, from the best of what is known of it.

    A send of this process is placed by how long ago it left on the loop's clock
    (``sent_ago``: a wall clock stepped since cannot move it) from the server's now; a
    journaled one by the server time recorded with it (``sent_server``, to within
    ``sent_uncertainty``), else by its wall-clock time moved onto the server's clock
    (``sent_wall_on_server``: None when that clock is unknown or was set back since).
    """
    uncertainty = clock_uncertainty
    if sent_ago is not None:
        sent_at = None if server_now is None else server_now - sent_ago
    elif sent_server is not None:
        sent_at, uncertainty = sent_server, sent_uncertainty
    else:
        sent_at = sent_wall_on_server
    return Doubt(
        video_id=video_id,
        external_task_id=external_task_id,
        sent_at=sent_at,
        window=window,
        uncertainty=uncertainty,
    )


def time_left(
    window: float,
    *,
    now: dt.datetime,
    sent_at: dt.datetime,
    server_now: dt.datetime | None,
    sent_server: dt.datetime | None,
) -> tuple[float, bool]:
    """For a send a journal left unanswered: the seconds left of its window, and whether its
    wall-clock time can place it.

    Both on the server's clock when the send's server time was recorded, so whatever this
    machine's clock did since cannot matter. Otherwise a clock set back since the send makes
    the elapsed time negative: the window is then waited in full (on the loop's clock), and
    the send cannot be placed.
    """
    if sent_server is not None and server_now is not None:
        elapsed = (server_now - sent_server).total_seconds()
        placed = True
    else:
        elapsed = (now - sent_at).total_seconds()
        placed = elapsed >= -CLOCK_STEP
    remaining = min(window, max(0.0, window - elapsed)) if placed else window
    return remaining, placed


def must_answer(
    *, now: float, ends: float, waits: bool, rival_on_wire: bool, may_resend: bool
) -> bool:
    """Whether the coming look-up must answer now: the windows (of the send and of rivals
    still on the wire) have ``ends``ed on the loop's clock, or the policy does not wait
    (``waits`` False) and neither a rival on the wire (its reply settles which task is whose)
    nor a verdict that would resend (``may_resend``: never "absent" before the window has
    closed) asks to wait."""
    return now >= ends or not (waits or rival_on_wire or may_resend)


def look_delay(*, now: float, ends: float, waits: bool) -> float:
    """Loop seconds until the next look-up: every `LOOK_EVERY` seconds while the window is
    open, or (a policy that does not wait) straight to its end."""
    remaining = max(0.0, ends - now)
    return min(LOOK_EVERY, remaining) if waits else remaining
