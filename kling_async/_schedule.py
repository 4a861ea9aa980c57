"""The poll schedule as pure decisions: when a task is polled next, and what counts as news.

Values in, values out: ages and loop times are numbers handed in, randomness is a
`random.Random` handed in; nothing here reads a clock, sleeps or awaits. The watcher
(``_watch``) applies these to its task states (docs/waiting.md "The poll schedule").
"""

from __future__ import annotations

import datetime as dt
import math
import random

from ._policies import PollPolicy
from .models import Task, TaskStatus

__all__ = [
    "CONFIRM_SPACING",
    "Schedule",
    "born_at",
    "capped_delay",
    "confirm_at",
    "newer",
    "next_early",
    "rank",
]

_SAMPLES = 64  # durations of finished tasks the schedule learns from
_RANK = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}
# A final callback asks for a confirming query at most this often per task: forged ones
# that repeat cannot turn a token into a stream of queries.
CONFIRM_SPACING = 0.25


def rank(status: TaskStatus) -> int:
    """How far a status is along: submitted 0, processing (or unknown) 1, finished 2.

    A status the SDK does not know is "not finished" (docs/concepts.md): it ranks as processing.
    """
    return _RANK.get(status, 1)  # a status is a str equal to its value


def newer(old: Task | None, new: Task) -> bool:
    """Whether ``new`` may replace ``old`` as the state seen: never a step back.

    The status order decides (submitted < processing and unknown statuses < done); within
    one rank the later ``updated_at`` wins, so a reply that was overtaken on the wire is not
    taken for news. A finished task stays finished.
    """
    if old is None:
        return True
    old_rank, new_rank = rank(old.status), rank(new.status)
    if new_rank != old_rank:
        return new_rank > old_rank
    if old.updated_at is None or new.updated_at is None:
        return not old.done  # no clock to compare: a finished state is kept
    return new.updated_at >= old.updated_at


class Schedule:
    """When to poll a task next: densely where completions are expected, sparsely elsewhere.

    Without knowledge the policy's ``min_duration``..``max_duration`` is the window where a
    task may finish; once a few tasks were seen to succeed, their durations replace it.
    Before the window polls space out from ``first_delay`` by ``growth`` (a task may fail
    early); past it they space out up to ``max_delay``.
    """

    __slots__ = ("_policy", "_samples")

    def __init__(self, policy: PollPolicy) -> None:
        self._policy = policy
        self._samples: list[float] = []

    def observe(self, seconds: float) -> None:
        """A task took ``seconds`` from creation to success."""
        if not self._policy.learn or not math.isfinite(seconds) or seconds < 0:
            return
        samples = self._samples
        samples.append(seconds)
        if len(samples) > _SAMPLES:
            del samples[0]

    def window(self) -> tuple[float, float]:
        """Where completions are expected, in seconds of a task's age."""
        policy = self._policy
        if len(self._samples) >= 3:
            # The first successes of a batch are its fastest tasks: they tell where the window
            # starts, not where it ends, so the policy's end stays unless they show a later one.
            low, high = min(self._samples), max(self._samples)
            start = max(0.0, low * 0.9 - policy.interval)
            return start, max(high * 1.25, policy.max_duration, start + policy.interval)
        return policy.min_duration, policy.max_duration

    def delay(self, age: float, *, listed: bool, rng: random.Random) -> float:
        """Seconds until the next poll of a task ``age`` seconds old."""
        policy = self._policy
        interval = policy.list_interval if listed else policy.interval
        start, end = self.window()
        if age < start:
            # Early polls land on (or just after) their points, never just before one: a poll
            # a moment early would be followed by another a moment later.
            delay = next_early(policy.first_delay, policy.growth, age, start) - age
            return delay * (1 + policy.jitter * rng.random())
        if age < end:
            delay = interval
        else:  # overdue: polls space out by a tenth of the time past the window
            delay = max(interval, min(policy.max_delay, interval + (age - end) / 10))
        if listed:
            return delay  # list refreshes are session-wide: nothing to spread
        return max(0.0, delay * (1 - policy.jitter * rng.random()))


def next_early(first: float, growth: float, age: float, start: float) -> float:
    """The age of the next early poll: ``first * growth**k`` past ``age``, at most ``start``."""
    if first <= 0 or first >= start:
        return start
    if age < first:
        return first
    try:
        if growth <= 1:
            target = first * (math.floor(age / first) + 1)
        else:
            target = first * growth ** (math.floor(math.log(age / first, growth)) + 1)
    except (OverflowError, ValueError, ZeroDivisionError):
        return start
    if growth > 1:
        while target <= age:  # floating point: at most a step or two
            target *= growth
    return min(target, start) if target > age else start


def capped_delay(
    delay: float, cap: float | None, *, jitter: float, rng: random.Random, confirmed: bool
) -> float:
    """The schedule's ``delay`` for a task polled at most every ``cap`` seconds (or None).

    A task whose callbacks come to a receiver is polled on the cap alone: callbacks tell of
    changes and polls are only the safety net for lost ones (docs/callbacks.md "Options").
    After a confirming query that did not show the task done (a forged callback, or a query
    that lags behind it), the usual schedule checks once more, then the cap again. The cap
    is shortened by up to ``jitter`` so that many waits do not poll in step.
    """
    if cap is None:
        return delay
    jittered = cap * (1 - jitter * rng.random())
    return min(delay, jittered) if confirmed else jittered


def confirm_at(now: float, confirmed_at: float, next_due: float) -> float:
    """When a final callback's confirming query is due: now, but at most once per spacing."""
    return min(next_due, max(now, confirmed_at + CONFIRM_SPACING))


def born_at(now: float, server_now: dt.datetime, created_at: dt.datetime | None) -> float:
    """The loop time a task was made: ``now`` less its age on the server's clock (never
    in the future, so a server clock behind ours cannot push a task's polls later)."""
    if created_at is None:
        return now
    return now - max(0.0, (server_now - created_at).total_seconds())
