"""The list refresh's pure rules: which tasks a page refreshed, when to stop, when to give up."""

from __future__ import annotations

import datetime as dt

import pytest

from kling_async import Task, TaskStatus
from kling_async._list_round import (
    MAX_PAGES,
    PAGE_SIZE,
    RoundVerdict,
    after_round,
    listing,
    read_page,
)

SERVER_NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
NOW = 5000.0  # loop time


def made(task_id: str, seconds_ago: float | None = None) -> Task:
    """A task on a list page, made ``seconds_ago`` on the server's clock (None: unknown)."""
    created = None if seconds_ago is None else SERVER_NOW - dt.timedelta(seconds=seconds_ago)
    return Task(task_id=task_id, status=TaskStatus.PROCESSING, created_at=created)


def page(*ids: str, size: int = PAGE_SIZE, last_ago: float | None = None) -> list[Task]:
    """A page of ``size`` tasks: ``ids`` first, foreign ones after, the last made
    ``last_ago`` seconds ago."""
    tasks = [made(task_id) for task_id in ids]
    tasks += [made(f"foreign-{n}") for n in range(size - len(tasks))]
    if tasks:
        tasks[-1] = made(tasks[-1].task_id, last_ago)
    return tasks


@pytest.mark.parametrize(
    ("mode", "pending", "expected"),
    [
        (None, 2, True),  # auto: list while two or more are pending
        (None, 1, False),  # one task is as cheap to query
        (True, 2, True),
        (True, 1, False),
        (False, 100, False),  # switched off
    ],
)
def test_listing_needs_two_pending_tasks_and_a_list(
    mode: bool | None, pending: int, expected: bool
) -> None:
    """Due polls go through the list only where it serves."""
    assert expected == listing(mode, pending)


def test_a_page_refreshes_the_wanted_tasks_it_shows_once_each() -> None:
    """Foreign tasks are skipped; a task shown twice is taken once (the first, newest)."""
    tasks = [made("a"), made("x"), made("b"), made("a", 5)]
    verdict = read_page(1, tasks, {"a", "b", "c"}, oldest_born=None, now=NOW, server_now=SERVER_NOW)
    assert ["a", "b"] == [task.task_id for task in verdict.refreshed]
    assert verdict.refreshed[0].created_at is None
    assert not verdict.more  # a short page: the list ends here


@pytest.mark.parametrize(
    ("number", "tasks", "wanted", "oldest_born", "more"),
    [
        (1, page("a", "b"), {"a", "b"}, None, False),  # every wanted task found
        (1, page("a"), {"a", "b"}, None, True),  # a full page, one still wanted
        (1, page("a", size=PAGE_SIZE - 1), {"a", "b"}, None, False),  # a short page
        (1, [], {"a"}, None, False),  # an empty page
        (MAX_PAGES - 1, page(), {"a"}, None, True),
        (MAX_PAGES, page(), {"a"}, None, False),  # the page budget is spent
        # The page ends with a task made 200 s ago; the oldest wanted one 100 s ago:
        (1, page(last_ago=200), {"a"}, NOW - 100, False),  # older than all: stop
        (1, page(last_ago=150), {"a"}, NOW - 100, True),  # within the slack: read on
        (1, page(last_ago=200), {"a"}, None, True),  # no birth known: read on
        (1, page(last_ago=None), {"a"}, NOW - 100, True),  # no creation time: read on
    ],
)
def test_the_refresh_reads_on_only_while_a_page_can_still_show_a_wanted_task(
    number: int, tasks: list[Task], wanted: set[str], oldest_born: float | None, more: bool
) -> None:
    """Stop once all are found, at a short page, past the page budget, or past the oldest."""
    verdict = read_page(
        number, tasks, wanted, oldest_born=oldest_born, now=NOW, server_now=SERVER_NOW
    )
    assert more == verdict.more


def test_the_older_page_rule_measures_age_on_the_servers_clock() -> None:
    """A server clock an hour ahead does not make a fresh page look old."""
    tasks = page(last_ago=10)
    ahead = SERVER_NOW + dt.timedelta(hours=1)
    verdicts = [
        read_page(1, tasks, {"a"}, oldest_born=NOW - 100, now=NOW, server_now=server_now).more
        for server_now in (SERVER_NOW, ahead)
    ]
    # On the server's own clock the page's last task is 10 s old (read on); the tasks are
    # made on the server's clock, so an hour ahead means it is 3610 s old (stop).
    assert [True, False] == verdicts


@pytest.mark.parametrize(
    ("found", "fruitless", "forced", "expected"),
    [
        (3, 2, False, RoundVerdict(fruitless=0, stop_listing=False)),  # found: start over
        (0, 0, False, RoundVerdict(fruitless=1, stop_listing=False)),
        (0, 1, False, RoundVerdict(fruitless=2, stop_listing=False)),
        (0, 2, False, RoundVerdict(fruitless=3, stop_listing=True)),  # three in a row
        (0, 2, True, RoundVerdict(fruitless=2, stop_listing=False)),  # forced: never
        (1, 2, True, RoundVerdict(fruitless=0, stop_listing=False)),
    ],
)
def test_a_list_that_never_shows_our_tasks_is_given_up(
    found: int, fruitless: int, forced: bool, expected: RoundVerdict
) -> None:
    """Three rounds in a row that show none of the session's tasks switch listing off."""
    assert expected == after_round(found, fruitless, forced=forced)
