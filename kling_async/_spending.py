"""What a session spent: the costs of the finished tasks it saw, each task counted once.

Pure bookkeeping (values in, values out): the watcher tells `Spending.saw` of every
finished task it folds in (a wait's poll, a list page, a trusted callback, a shared reply),
however often it sees one; `SessionStatistics` reads the sums (docs/concepts.md,
"What a task cost").
"""

from __future__ import annotations

import decimal

from .models import Task

__all__ = ["Spending"]

# Task ids remembered as counted; past the bound the oldest are forgotten first (a task seen
# again after this many others finished would count again).
_REMEMBERED = 100_000
# Amounts have at most 36 digits (`_converter.wire_decimal`): sums of them stay exact.
_EXACT = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Overflow])
_UNITS = 1  # the bits of what was counted for a task id
_CASH = 2


class Spending:
    """The sums of units and cash over the finished tasks seen, each task id counted once.

    A part of the cost that a first sighting lacked (a callback without the cash, say) is
    added when a later sighting brings it; a part already counted is never added again.
    """

    __slots__ = ("_counted", "cash", "units")

    def __init__(self) -> None:
        self.units = decimal.Decimal(0)
        self.cash = decimal.Decimal(0)
        self._counted: dict[str, int] = {}

    def saw(self, task: Task) -> None:
        """``task`` was seen finished: add what it cost, unless it was counted already."""
        cost = task.cost
        if cost is None or not task.done:
            return
        counted = self._counted
        had = counted.get(task.task_id, 0)
        has = had
        if cost.units is not None and not had & _UNITS:
            self.units = _EXACT.add(self.units, cost.units)
            has |= _UNITS
        if cost.cash is not None and not had & _CASH:
            self.cash = _EXACT.add(self.cash, cost.cash)
            has |= _CASH
        if has == had:
            return
        counted[task.task_id] = has
        if not had and len(counted) > _REMEMBERED:
            del counted[next(iter(counted))]
