"""What the MCP server spent and may still spend: its ledger and the spending-limit decision.

Pure bookkeeping (values in, values out): the server tells the ledger of each create it
starts, each task id it made, and each finished task it sees; `Ledger.refusal` decides before
a create is sent whether the limit allows it (docs/mcp.md, "The spending limit"). A task
still running, or a create still on its way, counts at the highest cost seen so far for its
family, so an agent in a loop cannot start more than the limit allows while none has finished.
A family with no cost seen yet cannot be priced: with a limit set, one task of such a family
may be running or on its way at a time, until one finishes with its cost.
At start the ledger is rebuilt from the server's journal (`Ledger.restore`): a restart does
not reset the limit.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable

import attrs

from ._journal import EntryState, JournalEntry
from ._spending import Spending
from ._task_codec import read_task
from .models import Task, TaskFamily

__all__ = ["Ledger", "Limits", "Reservation"]

_ZERO = (decimal.Decimal(0), decimal.Decimal(0))


@attrs.frozen(kw_only=True)
class Limits:
    """The spending limit: units and cash the server's creates may reach (None: no limit)."""

    units: decimal.Decimal | None = None
    cash: decimal.Decimal | None = None


@attrs.frozen(kw_only=True)
class Reservation:
    """A create the limit let through, counted as running until it made a task or failed."""

    number: int
    family: TaskFamily


class Ledger:
    """The tasks this server created through its journal, before a restart too (by id, with
    their family), and what they cost."""

    def __init__(self) -> None:
        self._spending = Spending()
        self._families: dict[str, TaskFamily] = {}  # task id -> family, in creation order
        self._running: set[str] = set()
        self._keys: dict[str, str] = {}  # a create's key -> the task id it made
        self._highest: dict[TaskFamily, tuple[decimal.Decimal, decimal.Decimal]] = {}
        # The families whose units (first) and cash (second) a finished task has shown.
        self._priced: tuple[set[TaskFamily], set[TaskFamily]] = (set(), set())
        self._cashless: str | None = None  # a task of ours that finished with no cash stated
        self._pending: dict[int, TaskFamily] = {}
        self._numbers = 0
        self._doubts: dict[str, Reservation] = {}  # a journaled create in doubt, by key

    # -- what the journal holds -----------------------------------------------------------

    def restore(self, entries: Iterable[JournalEntry]) -> None:
        """Count every task of the server's journal (``entries``, oldest first): a finished
        one at its recorded cost, a running one, and a create in doubt, as running."""
        for entry in entries:
            family = entry.request.family
            if entry.task_id is None:
                if entry.state is EntryState.SENDING and entry.key not in self._doubts:
                    self._doubts[entry.key] = self.reserve(family)
                continue
            self._keys[entry.key] = entry.task_id
            if entry.task_id in self._families:
                continue
            self._families[entry.task_id] = family
            if entry.state is EntryState.CREATED:
                self._running.add(entry.task_id)
            elif entry.state is EntryState.FINISHED:
                task = _recorded(entry)
                if task is not None:
                    self._running.add(entry.task_id)
                    self.saw(task, family)
                # Without its task, a finished one's cost is unknown: counted as nothing.

    def settled(self, entries: Iterable[JournalEntry]) -> None:
        """The creates in doubt were looked up: each that made a task now counts as that
        task, each that certainly made none no longer counts; the others stay in doubt."""
        by_key = {entry.key: entry for entry in entries}
        for key, reservation in list(self._doubts.items()):
            entry = by_key.get(key)
            if entry is not None and entry.task_id is not None:
                self.created(reservation, entry.task_id, key)
            elif entry is not None and entry.state is EntryState.SENDING:
                continue
            else:
                self.released(reservation)
            self._doubts.pop(key, None)  # `created` may have taken it already

    # -- what happened --------------------------------------------------------------------

    def reserve(self, family: TaskFamily) -> Reservation:
        """A create of ``family`` is about to be sent: count it as running."""
        self._numbers += 1
        self._pending[self._numbers] = family
        return Reservation(number=self._numbers, family=family)

    def created(self, reservation: Reservation, task_id: str, key: str | None) -> None:
        """The reserved create made (or, for a known key, found) task ``task_id``."""
        self._pending.pop(reservation.number, None)
        if key is not None:
            self._keys[key] = task_id
            doubt = self._doubts.pop(key, None)  # the key's create in doubt: this task
            if doubt is not None:
                self._pending.pop(doubt.number, None)
        if task_id not in self._families:
            self._families[task_id] = reservation.family
            self._running.add(task_id)

    def released(self, reservation: Reservation) -> None:
        """The reserved create failed: it made no task this server knows of."""
        self._pending.pop(reservation.number, None)

    def in_doubt(self, reservation: Reservation, key: str) -> None:
        """The reserved create under ``key`` may have made a task that nobody can name
        (its reply was lost, the look-up could not tell): it keeps counting as running,
        never guessed away, until its key's task is known (`created`, `settled`)."""
        if key in self._doubts:  # already counted once for this key
            self._pending.pop(reservation.number, None)
        else:
            self._doubts[key] = reservation

    def saw(self, task: Task, family: TaskFamily) -> None:
        """``task`` (of ``family``) was seen: remember the cost of a finished one."""
        if not task.done:
            return
        cost = task.cost
        if cost is not None:
            units, cash = self._highest.get(family, _ZERO)
            self._highest[family] = (
                max(units, cost.units or _ZERO[0]),
                max(cash, cost.cash or _ZERO[1]),
            )
            for part, amount in enumerate((cost.units, cost.cash)):
                if amount is not None:
                    self._priced[part].add(family)
        if task.task_id in self._running:
            self._running.discard(task.task_id)
            self._spending.saw(task)
            if cost is not None and cost.cash is None and self._cashless is None:
                self._cashless = task.task_id

    # -- what it means --------------------------------------------------------------------

    def known_key(self, key: str) -> str | None:
        """The task id a create with ``key`` made through this server, if any."""
        return self._keys.get(key)

    def running(self) -> list[tuple[str, TaskFamily]]:
        """The tasks this server created that it has not yet seen finished."""
        return [(task_id, self._families[task_id]) for task_id in self._running]

    def family(self, task_id: str) -> TaskFamily | None:
        """The family of a task this server created."""
        return self._families.get(task_id)

    @property
    def count(self) -> int:
        """How many tasks this server created (through its journal)."""
        return len(self._families)

    @property
    def units(self) -> decimal.Decimal:
        """Units spent on the finished tasks this server created."""
        return self._spending.units

    @property
    def cash(self) -> decimal.Decimal:
        """Cash spent on the finished tasks this server created."""
        return self._spending.cash

    def committed(self) -> tuple[decimal.Decimal, decimal.Decimal]:
        """Units and cash spent plus those of the creates and tasks still running, each at
        the highest cost seen so far for its family."""
        units, cash = self.units, self.cash
        running = [self._families[task_id] for task_id in self._running]
        for family in [*running, *self._pending.values()]:
            high_units, high_cash = self._highest.get(family, _ZERO)
            units += high_units
            cash += high_cash
        return units, cash

    def unpriced(self, what: str) -> list[tuple[str | None, TaskFamily]]:
        """The tasks (by id; None for a create still on its way) and their families, still
        running, whose ``what`` (units or cash) no finished task of their family has shown
        yet: the limit cannot count them."""
        part = 0 if what == "units" else 1
        running = [(task_id, self._families[task_id]) for task_id in self._running]
        pending = [(None, family) for family in self._pending.values()]
        return [
            (task, family)
            for task, family in [*running, *pending]
            if family not in self._priced[part]
        ]

    def refusal(self, limits: Limits) -> str | None:
        """Why a create must not be sent under ``limits``, or None when it may."""
        units, cash = self.committed()
        if limits.cash is not None and self._cashless is not None:
            return (
                f"the spending limit --max-cash {limits.cash} cannot be kept: task "
                f"{self._cashless} finished with a cost that states no cash (Kling's own API "
                "states units only), so the cash spent is not known; the operator should "
                "limit units (--max-units) instead; nothing was sent"
            )
        for what, limit, reached in (("units", limits.units, units), ("cash", limits.cash, cash)):
            unpriced = [] if limit is None else self.unpriced(what)
            if unpriced:
                task_id, family = unpriced[0]
                doubt = self._unpriced_doubt(what)
                if doubt is not None:
                    return (
                        f"the spending limit (--max-{what} {limit}) cannot count the create in "
                        f"doubt under key {doubt!r} ({family.value}): it may have made a task "
                        "that no look-up could name, and no task of its kind has finished with "
                        f"its {what} yet; the operator settles it with `kling-async journal "
                        f"settle JOURNAL {doubt} TASK_ID` (or `forget` once sure it made none); "
                        "nothing was sent"
                    )
                which = "a create still on its way" if task_id is None else f"task {task_id}"
                return (
                    f"the spending limit (--max-{what} {limit}) cannot count {which} "
                    f"({family.value}): no task of its kind has finished with its {what} "
                    "yet, so one runs at a time until one does; call wait_for_task on it, then "
                    "create again; nothing was sent"
                )
            if limit is not None and reached >= limit:
                return (
                    f"the spending limit is reached: --max-{what} {limit}, and {what} spent "
                    f"or committed come to {reached} ({self.units} units and {self.cash} cash "
                    f"spent; {_tasks(len(self._running) + len(self._pending))} still running, "
                    "each counted at the highest cost seen for its kind); nothing was sent"
                )
        return None

    def _unpriced_doubt(self, what: str) -> str | None:
        """The key of a create in doubt the limit cannot count: unlike a running task or a
        create on its way, it may never end by itself, so the refusal names its way out."""
        part = 0 if what == "units" else 1
        for key, reservation in self._doubts.items():
            if reservation.number in self._pending and reservation.family not in self._priced[part]:
                return key
        return None

    def summary(self, limits: Limits) -> dict[str, object]:
        """The ``spending`` tool's structured result: money as decimal strings."""
        units, cash = self.committed()
        return {
            "units_spent": str(self.units),
            "cash_spent": str(self.cash),
            "units_committed": str(units),
            "cash_committed": str(cash),
            "max_units": None if limits.units is None else str(limits.units),
            "max_cash": None if limits.cash is None else str(limits.cash),
            "tasks_created": [
                {"task_id": task_id, "family": family.value, "running": task_id in self._running}
                for task_id, family in self._families.items()
            ],
        }


def _tasks(count: int) -> str:
    return f"{count} task" if count == 1 else f"{count} tasks"


def _recorded(entry: JournalEntry) -> Task | None:
    """The finished task a journal entry recorded, or None (none recorded, or unreadable)."""
    try:
        task = read_task(entry.task)
    except ValueError:
        return None
    return task if task.done and task.task_id == entry.task_id else None
