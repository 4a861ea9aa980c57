"""The rules of a list refresh, pure: a page in, the tasks it refreshed and whether to read on.

A refresh reads the account's task list, newest first, to bring every pending task of the
session up to date with a few requests (docs/waiting.md "Refreshing through the task list").
Nothing here sends, sleeps or reads a clock: "now" on either clock is handed in as a value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

import attrs

from .models import Task

__all__ = [
    "MAX_PAGES",
    "PAGE_SIZE",
    "PageVerdict",
    "RoundVerdict",
    "after_round",
    "listing",
    "read_page",
]

PAGE_SIZE = 500  # the list endpoint's largest pageSize
MAX_PAGES = 20  # a refresh reads at most 10,000 tasks; the rest are queried on their own
_MIN_PENDING = 2  # one pending task is as cheap to query as to list
_FRUITLESS_ROUNDS = 3  # rounds in a row that show none of our tasks: stop listing
# A page ending with a task made this long before every wanted task ends the refresh: the
# slack covers a loop clock and a server clock that disagree a little.
_OLDER_SLACK = 60.0


def listing(mode: bool | None, pending: int) -> bool:
    """Whether due polls go through a list refresh: not switched off, and two or more
    tasks pending (a single task is as cheap to query)."""
    return mode is not False and pending >= _MIN_PENDING


@attrs.frozen(kw_only=True)
class PageVerdict:
    """What one list page did: the wanted tasks it refreshed, and whether to read the next."""

    refreshed: tuple[Task, ...]
    more: bool


def read_page(
    number: int,
    tasks: Sequence[Task],
    wanted: Collection[str],
    *,
    oldest_born: float | None,
    now: float,
    server_now: dt.datetime,
) -> PageVerdict:
    """Page ``number`` (from 1) of ``tasks`` against the ids still ``wanted``.

    The refresh reads on until every wanted task was found, a page comes back short, the
    page ends with a task made well before the oldest wanted one (``oldest_born``, a loop
    time like ``now``; the task's age is measured on the server's clock, ``server_now``),
    or `MAX_PAGES` pages were read.
    """
    refreshed: list[Task] = []
    seen: set[str] = set()
    for task in tasks:
        if task.task_id in wanted and task.task_id not in seen:
            seen.add(task.task_id)
            refreshed.append(task)
    more = (
        len(seen) < len(wanted)
        and len(tasks) >= PAGE_SIZE
        and number < MAX_PAGES
        and not _older_than_wanted(tasks, oldest_born, now, server_now)
    )
    return PageVerdict(refreshed=tuple(refreshed), more=more)


def _older_than_wanted(
    tasks: Sequence[Task], oldest_born: float | None, now: float, server_now: dt.datetime
) -> bool:
    """Whether the page's last task was made well before every task still wanted."""
    last_made = tasks[-1].created_at if tasks else None
    if oldest_born is None or last_made is None:
        return False
    age = (server_now - last_made).total_seconds()
    return now - age < oldest_born - _OLDER_SLACK


@attrs.frozen(kw_only=True)
class RoundVerdict:
    """After a refresh: the count of fruitless rounds in a row, and whether to stop listing."""

    fruitless: int
    stop_listing: bool


def after_round(found: int, fruitless: int, *, forced: bool) -> RoundVerdict:
    """Count a refresh that found ``found`` wanted tasks after ``fruitless`` fruitless ones.

    Unless listing is forced, a list that shows none of the session's tasks several rounds
    in a row is taken as not serving this session (a gateway listing another account).
    """
    if found:
        return RoundVerdict(fruitless=0, stop_listing=False)
    if forced:
        return RoundVerdict(fruitless=fruitless, stop_listing=False)
    fruitless += 1
    return RoundVerdict(fruitless=fruitless, stop_listing=fruitless >= _FRUITLESS_ROUNDS)
