"""Which implementation of each account-wide concern a session uses: its own, or the fleet's.

The drivers talk to small protocols (``_account``: the slot gate and the pace;
``_task_state``: the task states; ``_journal``: the journal of keyed creates). `LocalParts`
gives the in-process implementations, today's single-process behaviour; with ``fleet=`` a
session takes `_fleet_parts.FleetParts` instead, which shares them in Redis
(``docs/fleet.md``). Nothing else in the session knows which it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ._account import LocalPace, LocalSlotGate

if TYPE_CHECKING:
    import redis.asyncio

    from ._account import RequestPace, Sleep, SlotGate
    from ._fleet import Fleet
    from ._journal import Journal
    from ._task_state import TaskStates

__all__ = ["AccountParts", "LocalParts", "account_parts"]


class AccountParts(Protocol):
    """Makes a session's account-wide parts; `open` and `close` go with the session."""

    @property
    def fleet(self) -> Fleet | None:
        """The fleet's Redis link, or None in a single process."""

    def pace(self) -> RequestPace:
        """The pace every request keeps after a 1302."""

    def gate(self, sleep: Sleep, *, limit: int | None, hold: float) -> SlotGate:
        """The parallel-task gate (``limit``: the account's limit, None to learn it;
        ``hold``: how long a create's slot may stay unbound, its longest time on the wire)."""

    def states(self) -> TaskStates:
        """Where the task states live."""

    def journal(self) -> Journal | None:
        """The journal keyed creates use when the session was given none, or None."""

    async def open(self) -> None:
        """Open what the parts share (before the transport and the journal)."""

    async def close(self) -> None:
        """Close what `open` opened (after everything else)."""


class LocalParts:
    """The in-process parts: one process's gate, pace and task states; no journal."""

    fleet: Fleet | None = None

    def pace(self) -> RequestPace:
        return LocalPace()

    def gate(self, sleep: Sleep, *, limit: int | None, hold: float) -> SlotGate:
        return LocalSlotGate(sleep, limit=limit, hold=hold)

    def states(self) -> TaskStates:
        from ._task_state import LocalTaskStates

        return LocalTaskStates()

    def journal(self) -> Journal | None:
        return None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def account_parts(fleet: str | redis.asyncio.Redis | None, *, account: str) -> AccountParts:
    """The parts for a session given ``fleet`` (None, a Redis URL or client, already checked)."""
    if fleet is None:
        return LocalParts()
    from ._fleet_parts import FleetParts  # imports redis: only when a fleet is asked for

    return FleetParts(fleet, account=account)
