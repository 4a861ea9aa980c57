"""The poll schedule's pure decisions: what counts as news, and when the next poll comes."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest

from kling_async import Task, TaskStatus
from kling_async._schedule import (
    CONFIRM_SPACING,
    born_at,
    capped_delay,
    confirm_at,
    newer,
    next_early,
    rank,
)

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


def task(status: str, updated: float | None = None) -> Task:
    """A task of ``status`` updated ``updated`` seconds after T0 (None: no clock)."""
    at = None if updated is None else T0 + dt.timedelta(seconds=updated)
    return Task(task_id="t1", status=TaskStatus(status), updated_at=at)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("submitted", 0), ("processing", 1), ("queueing", 1), ("succeed", 2), ("failed", 2)],
)
def test_rank_orders_statuses_and_an_unknown_one_is_not_finished(
    status: str, expected: int
) -> None:
    """submitted < processing = an unknown status < succeed = failed."""
    assert expected == rank(TaskStatus(status))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (None, task("submitted"), True),  # anything is news at first
        (task("submitted", 5), task("processing", 1), True),  # a later status wins
        (task("processing", 1), task("submitted", 5), False),  # never a step back
        (task("succeed", 1), task("processing", 9), False),
        (task("queueing", 1), task("processing", 0), False),  # same rank: the clock decides
        (task("processing", 1), task("processing", 2), True),
        (task("processing", 2), task("processing", 1), False),  # overtaken on the wire
        (task("processing", 2), task("processing", 2), True),
        (task("processing"), task("processing", 1), True),  # no clock: not finished, taken
        (task("succeed"), task("failed", 1), False),  # no clock: a finished state is kept
        (task("succeed", 1), task("failed", 2), True),  # both finished: the later one
    ],
)
def test_newer_never_steps_back(old: Task | None, new: Task, expected: bool) -> None:
    """The status order decides; within one rank the later updated_at; finished stays."""
    assert expected == newer(old, new)


@pytest.mark.parametrize(
    ("first", "growth", "age", "start", "expected"),
    [
        (15.0, 2.0, 0.0, 60.0, 15.0),  # before the first point: the first point
        (15.0, 2.0, 15.0, 60.0, 30.0),  # on a point: the next one
        (15.0, 2.0, 16.0, 60.0, 30.0),
        (15.0, 2.0, 31.0, 60.0, 60.0),  # 60 is both the next point and the start
        (15.0, 2.0, 31.0, 50.0, 50.0),  # never past the window's start
        (15.0, 1.0, 16.0, 60.0, 30.0),  # growth 1: evenly spaced
        (15.0, 0.5, 31.0, 60.0, 45.0),  # growth below 1 is taken as evenly spaced
        (0.0, 2.0, 5.0, 60.0, 60.0),  # no early polls: straight to the start
        (90.0, 2.0, 5.0, 60.0, 60.0),  # the first point past the start: the start
        (15.0, 2.0, 60.0, 60.0, 60.0),  # at the start already
    ],
)
def test_next_early_lands_on_the_growing_points(
    first: float, growth: float, age: float, start: float, expected: float
) -> None:
    """Early polls come at first * growth**k past the age, never later than the start."""
    assert expected == next_early(first, growth, age, start)


class FixedRandom(random.Random):
    """A random source that always draws ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("delay", "cap", "confirmed", "draw", "expected"),
    [
        (2.0, None, False, 0.5, 2.0),  # no cap: the schedule alone
        (2.0, 60.0, False, 0.0, 60.0),  # capped: the safety net alone, even when sooner
        (90.0, 60.0, False, 0.0, 60.0),
        (2.0, 60.0, False, 1.0, 54.0),  # shortened by up to the jitter
        (2.0, 60.0, True, 0.0, 2.0),  # after a confirm: the schedule checks once more
        (90.0, 60.0, True, 0.0, 60.0),  # ... unless the cap comes sooner
    ],
)
def test_capped_delay_is_the_safety_net(
    delay: float, cap: float | None, confirmed: bool, draw: float, expected: float
) -> None:
    """A task whose changes are told elsewhere is polled on its cap alone."""
    rng = FixedRandom(draw)
    assert expected == capped_delay(delay, cap, jitter=0.1, rng=rng, confirmed=confirmed)


@pytest.mark.parametrize(
    ("now", "confirmed_at", "next_due", "expected"),
    [
        (10.0, -math.inf, 70.0, 10.0),  # never confirmed: due now
        (10.0, 9.9, 70.0, 9.9 + CONFIRM_SPACING),  # one just began: spaced out
        (10.0, 5.0, 70.0, 10.0),  # the last one long ago: now
        (10.0, -math.inf, 3.0, 3.0),  # a poll already due sooner stays
    ],
)
def test_a_confirm_is_due_now_but_spaced_out(
    now: float, confirmed_at: float, next_due: float, expected: float
) -> None:
    """Repeated final callbacks cannot turn into a stream of queries."""
    assert expected == confirm_at(now, confirmed_at, next_due)


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (None, 1000.0),  # no creation time: made now
        (T0 - dt.timedelta(seconds=30), 970.0),  # 30 s old on the server's clock
        (T0 + dt.timedelta(seconds=5), 1000.0),  # made in the server's future: not later
    ],
)
def test_born_at_measures_the_age_on_the_servers_clock(
    created: dt.datetime | None, expected: float
) -> None:
    """A task's loop time of birth is now less its age; never in the future."""
    assert expected == born_at(1000.0, T0, created)
