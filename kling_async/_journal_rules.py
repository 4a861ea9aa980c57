"""The journal's state machine as pure decisions: values in, values out.

Which outcome a claim of an existing key gets, which request a claim records, which owned
moves exist and why one was refused, what may be settled, what ``resume`` picks up. Every
`Journal` implementation (the embedded SQLite one, a shared store) applies these same
rules; they touch no file, clock or event loop, so their tests are tables of values.
"""

from __future__ import annotations

import attrs

from ._journal import ClaimOutcome, EntryState
from ._source_requests import CreateRequest

__all__ = [
    "MARK_CREATED",
    "MARK_NOT_SENT",
    "MARK_REFUSED",
    "MARK_SENDING",
    "WITH_TASK",
    "Move",
    "carries_stamp",
    "existing_outcome",
    "is_pending",
    "missed_move",
    "settle_refusal",
    "to_record",
]

WITH_TASK = frozenset({EntryState.CREATED, EntryState.FINISHED, EntryState.GONE})
"""The states whose record must name a task id."""


@attrs.frozen(kw_only=True)
class Move:
    """One transition of a key this instance owns: ``source`` -> ``target``."""

    what: str
    """The journal method that makes it (for messages)."""
    source: EntryState
    target: EntryState
    releases: bool
    """Whether the move ends this instance's ownership (waiters for the key wake up)."""


MARK_SENDING = Move(
    what="mark_sending", source=EntryState.INTENT, target=EntryState.SENDING, releases=False
)
MARK_NOT_SENT = Move(
    what="mark_not_sent", source=EntryState.SENDING, target=EntryState.INTENT, releases=False
)
MARK_CREATED = Move(
    what="mark_created", source=EntryState.SENDING, target=EntryState.CREATED, releases=True
)
MARK_REFUSED = Move(
    what="mark_refused", source=EntryState.SENDING, target=EntryState.REFUSED, releases=True
)


def missed_move(
    move: Move, key: str, *, state: str | None, owner: str | None, token: str
) -> RuntimeError | None:
    """Why ``move`` could not be made on ``key`` (recorded in ``state``, owned by ``owner``;
    ``state`` None: no record) by the instance ``token``: a session bug, as a
    ``RuntimeError``; None when the key was fit for it (so the task id was the obstacle)."""
    if state is None:
        return RuntimeError(f"{move.what}({key!r}): the key was never claimed")
    if owner != token:
        return RuntimeError(f"{move.what}({key!r}): this journal instance does not own the key")
    if state != move.source.value:
        return RuntimeError(f"{move.what}({key!r}): the key is {state}, not {move.source.value}")
    return None


def existing_outcome(state: EntryState, *, owner_alive: bool) -> ClaimOutcome:
    """What a claim of a key already recorded in ``state`` gets (see the table in
    ``_journal``): a task or a refusal is final; a live owner's create is BUSY; otherwise
    the key is taken over, FRESH if nothing left the machine, else IN_DOUBT."""
    if state in (EntryState.CREATED, EntryState.FINISHED):
        return ClaimOutcome.EXISTING
    if state is EntryState.REFUSED:
        return ClaimOutcome.REFUSED
    if state is EntryState.GONE:
        return ClaimOutcome.GONE
    if owner_alive:
        return ClaimOutcome.BUSY
    if state is EntryState.INTENT:
        return ClaimOutcome.FRESH
    return ClaimOutcome.IN_DOUBT


def carries_stamp(
    request: CreateRequest, *, stamped: bool, recorded_external_id: str | None
) -> bool:
    """Whether ``request`` carries the record's own stamp (a resume claiming
    ``entry.request``): it then matches the record as the bare request, stamp left out."""
    return (
        stamped
        and request.external_task_id is not None
        and request.external_task_id == recorded_external_id
    )


def to_record(
    request: CreateRequest, stamp: str | None, *, via_stamp: bool = False
) -> tuple[CreateRequest, bool]:
    """The request a FRESH claim records, and whether its external id is a stamp: the
    request as it came when it carries the record's stamp (``via_stamp``), else the
    request with ``stamp`` on it when one is given, else the request as it came."""
    if via_stamp:
        return request, True
    if stamp is not None:
        return attrs.evolve(request, external_task_id=stamp), True
    return request, False


def settle_refusal(
    key: str, *, state: str, task_id: str | None, owner_alive: bool
) -> ValueError | None:
    """Why the caller may not settle ``key`` (recorded in ``state``) to a task, or None:
    only a key in doubt (SENDING) or whose task is GONE, and no live owner's."""
    if owner_alive:
        return ValueError(f"key {key!r} is being created by a live journal instance")
    if state not in (EntryState.SENDING.value, EntryState.GONE.value):
        what = f" (task {task_id})" if task_id else ""
        return ValueError(
            f"key {key!r} is {state}{what}: only a key in doubt (sending) or "
            "whose task is gone can be settled"
        )
    return None


def is_pending(state: EntryState, *, owner_alive: bool) -> bool:
    """Whether ``session.resume()`` must pick the key up: a task not yet seen finished
    (CREATED), or a send in doubt that no live instance is still making (SENDING)."""
    if state is EntryState.CREATED:
        return True
    return state is EntryState.SENDING and not owner_alive
