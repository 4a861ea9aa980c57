"""Retry and poll policies as frozen values, and the pure rules that apply them.

Nothing here sleeps or reads a clock: callers pass the attempt number, the elapsed time and a
``random.Random``; the session does the waiting. The retry classes (``docs/errors.md``, "What
is retried") say which failures a create may repeat, which a query may, and how Retry-After
counts.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import math
import random
from typing import Any

import attrs

from .errors import (
    APIError,
    AuthenticationError,
    KlingError,
    RateLimitError,
    ResponseDecodeError,
    RetryAfterTooLongError,
    ServerError,
    TaskLimitError,
    TransportError,
)

__all__ = [
    "Action",
    "DownloadPolicy",
    "PollPolicy",
    "RetryPolicy",
    "Step",
    "classify",
    "next_step",
    "parse_retry_after",
]


def _non_negative(_instance: Any, attribute: Any, value: float) -> None:
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value >= 0
        and not math.isnan(value)
    ):
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _fraction(_instance: Any, attribute: Any, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _at_least_one(_instance: Any, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _growth(_instance: Any, attribute: Any, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 1):
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


def _backoff(
    first: float, growth: float, cap: float, jitter: float, n: int, rng: random.Random
) -> float:
    """Exponential backoff for the ``n``-th wait (from 1), capped, shortened by up to ``jitter``."""
    try:
        nominal = min(cap, first * growth ** (n - 1))
    except OverflowError:  # a long wait with a steep growth: long past the cap
        nominal = cap
    return nominal * (1 - jitter * rng.random())


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How one request is repeated after a transient failure.

    A request is tried at most ``attempts`` times and retried only while the waits fit in
    ``total_time`` seconds. Waits grow from ``first_delay`` by ``growth`` up to ``max_delay``,
    each shortened by a random fraction up to ``jitter``. A ``Retry-After`` the server sends
    is honoured up to ``retry_after_cap`` seconds; a longer one fails at once with
    `RetryAfterTooLongError`. A create refused with 1303 (too many running tasks) waits for a
    free slot up to ``task_slot_timeout`` seconds from the first refusal, trying again at the
    latest every ``task_slot_delay`` seconds or as soon as the session sees a task finish
    (after the full ``Retry-After`` when the refusal has one); those waits are not part of
    ``total_time``.

    Added in version 0.1.
    """

    attempts: int = attrs.field(default=5, validator=_at_least_one)
    total_time: float = attrs.field(default=60.0, validator=_non_negative)
    first_delay: float = attrs.field(default=0.5, validator=_non_negative)
    growth: float = attrs.field(default=2.0, validator=_growth)
    max_delay: float = attrs.field(default=10.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.5, validator=_fraction)
    retry_after_cap: float = attrs.field(default=60.0, validator=_non_negative)
    task_slot_timeout: float = attrs.field(default=600.0, validator=_non_negative)
    task_slot_delay: float = attrs.field(default=10.0, validator=_non_negative)
    wait: bool = True
    """False removes every wait (backoff, Retry-After, the 1303 slot), as `instant()` does."""

    @classmethod
    def instant(cls, **changes: Any) -> RetryPolicy:
        """A policy for tests: the same retries, no waiting at all (caps still apply)."""
        return cls(
            **{"first_delay": 0.0, "max_delay": 0.0, "jitter": 0.0, "wait": False, **changes}
        )

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (counting from 1)."""
        if not self.wait:
            return 0.0
        return _backoff(self.first_delay, self.growth, self.max_delay, self.jitter, retry, rng)

    def retry_delay(
        self,
        error: KlingError,
        *,
        retry: int,
        elapsed: float,
        rng: random.Random,
        retry_after: float | None = None,
    ) -> float | None:
        """Seconds to wait before retry number ``retry``, or None when the budget is spent.

        ``retry_after`` is the server's ``Retry-After`` when ``error`` does not carry one (an
        `APIError` does; a media host's reply is not one). Raises RetryAfterTooLongError when
        the server asks for more than ``retry_after_cap``.
        """
        if retry >= self.attempts:
            return None
        delay = self.backoff(retry, rng)
        if retry_after is None and isinstance(error, APIError):
            retry_after = error.retry_after
        if retry_after is not None:
            if retry_after > self.retry_after_cap:
                raise RetryAfterTooLongError(
                    error,  # type: ignore[arg-type]  # retry_after is only set on APIError
                    retry_after=retry_after,
                    cap=self.retry_after_cap,
                ) from error
            if self.wait:
                delay = max(delay, retry_after)
        if elapsed + delay > self.total_time:
            return None
        return delay

    def slot_delay(self, retry: int, rng: random.Random, error: KlingError | None = None) -> float:
        """Longest wait before trying a create again after 1303 (a finished task ends it sooner).

        A ``Retry-After`` on the 1303 reply lengthens it, and beyond ``retry_after_cap`` raises
        RetryAfterTooLongError, as for any other retry.
        """
        retry_after = error.retry_after if isinstance(error, APIError) else None
        if retry_after is not None and retry_after > self.retry_after_cap:
            raise RetryAfterTooLongError(
                error,  # type: ignore[arg-type]  # retry_after is only set on APIError
                retry_after=retry_after,
                cap=self.retry_after_cap,
            ) from error
        if not self.wait:
            return 0.0
        delay = _backoff(
            self.first_delay, self.growth, self.task_slot_delay, self.jitter, retry, rng
        )
        return max(delay, retry_after or 0.0)

    def slot_wait(
        self, error: KlingError, *, wait_number: int, waited: float, rng: random.Random
    ) -> tuple[float, bool] | None:
        """The wait after 1303 number ``wait_number``, ``waited`` seconds after the first:
        its seconds and whether a task seen finishing may end it sooner; None when it would
        pass ``task_slot_timeout`` (then the refusal is raised).

        A ``Retry-After`` on the refusal is honoured in full, not cut short by a task
        finishing; one that ends past the slot timeout fails at once.
        """
        remaining = self.task_slot_timeout - waited
        if remaining <= 0:
            return None
        delay = self.slot_delay(wait_number, rng, error)
        asked = error.retry_after if isinstance(error, APIError) else None
        if asked is not None and self.wait and asked > remaining:
            return None
        return min(delay, remaining), asked is None


@attrs.frozen(kw_only=True)
class PollPolicy:
    """When waits ask for a task's status: densely where it may finish, sparsely elsewhere.

    Without knowledge a task is expected to finish between ``min_duration`` and
    ``max_duration`` seconds after it was made (Kling: usually within about 4 minutes). In that
    window a task is queried every ``interval`` seconds, or refreshed through the task list
    every ``list_interval`` seconds (one list page refreshes many tasks). Before it, polls come
    at ``first_delay`` seconds and then ``growth`` times later each (a task may fail early);
    past it they space out up to ``max_delay``. Each query's wait is shortened (an early
    poll's lengthened) by up to ``jitter`` so that many waits do not poll in step; list
    refreshes keep one cadence for the whole session. With ``learn`` (the default) the
    session replaces the window's start by what the tasks it saw succeed took.

    Added in version 0.1; the schedule by window, ``interval``, ``list_interval``,
    ``min_duration``, ``max_duration`` and ``learn`` in 0.2.
    """

    first_delay: float = attrs.field(default=15.0, validator=_non_negative)
    growth: float = attrs.field(default=2.0, validator=_growth)
    interval: float = attrs.field(default=2.75, validator=_non_negative)
    list_interval: float = attrs.field(default=1.9, validator=_non_negative)
    min_duration: float = attrs.field(default=30.0, validator=_non_negative)
    max_duration: float = attrs.field(default=240.0, validator=_non_negative)
    max_delay: float = attrs.field(default=15.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.1, validator=_fraction)
    learn: bool = True

    def __attrs_post_init__(self) -> None:
        if self.max_duration < self.min_duration:
            raise ValueError(
                f"max_duration ({self.max_duration}) must be >= min_duration ({self.min_duration})"
            )

    @classmethod
    def instant(cls) -> PollPolicy:
        """A policy for tests: poll again at once."""
        return cls(
            first_delay=0.0,
            interval=0.0,
            list_interval=0.0,
            min_duration=0.0,
            max_duration=0.0,
            max_delay=0.0,
            jitter=0.0,
            learn=False,
        )


def _positive(_instance: Any, attribute: Any, value: object) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _bool(_instance: Any, attribute: Any, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, not {type(value).__name__}")


@attrs.frozen(kw_only=True)
class DownloadPolicy:
    """The bounds of one download, and which hosts it may reach.

    A body larger than ``max_bytes`` (announced or as it streams) fails, as does one that
    brings fewer than ``stall_bytes`` in ``stall_window`` seconds (the default, 64 KiB a
    minute, is about 1 KB/s: far below any real link, far above a trickle). Both are final,
    not retried. Media may only come from public addresses: a URL or redirect whose host is,
    or resolves to, a loopback, private, link-local, multicast, reserved or unspecified
    address is refused before connecting, except loopback when the session's own base URL is
    on loopback (the emulator). ``allow_private=True`` lifts that rule (a media proxy on your
    own network).

    Added in version 0.2.
    """

    max_bytes: int = attrs.field(default=2 * 1024**3, validator=_at_least_one)
    stall_bytes: int = attrs.field(default=64 * 1024, validator=_at_least_one)
    stall_window: float = attrs.field(default=60.0, validator=_positive)
    allow_private: bool = attrs.field(default=False, validator=_bool)


class Action(enum.Enum):
    """What to do after a failed try."""

    RAISE = "raise"
    RETRY = "retry"
    RESIGN = "resign"  # 1004: sign a fresh token, retry once
    WAIT_SLOT = "wait_slot"  # 1303: wait for a running task to finish
    RECONCILE = "reconcile"  # a create whose outcome is unknown: find out before anything else


def classify(error: KlingError, *, create: bool) -> Action:
    """Decide what a failed try means (``docs/errors.md``, "What is retried").

    A create is repeated only where the server certainly made no task; where the outcome is
    unknown it must be reconciled. A query is safe to repeat on anything transient.
    """
    if isinstance(error, AuthenticationError):
        # 1004 expired, 1003 not yet valid: a token signed on a clock the server disagrees
        # with; signed again on the server's clock (learned from the refusal's Date), once.
        return Action.RESIGN if error.code in (1003, 1004) else Action.RAISE
    if isinstance(error, TaskLimitError):
        return Action.WAIT_SLOT if create else Action.RETRY
    if isinstance(error, RateLimitError):
        return Action.RETRY
    if isinstance(error, TransportError):
        return Action.RECONCILE if create and error.sent else Action.RETRY
    if isinstance(error, ServerError):
        if not create:
            return Action.RETRY
        # A 503 with Kling's own envelope (5001, maintenance) refused the request outright.
        return Action.RETRY if error.status == 503 and error.code == 5001 else Action.RECONCILE
    if isinstance(error, ResponseDecodeError):
        if create:
            return Action.RECONCILE
        return Action.RAISE if error.is_json else Action.RETRY
    return Action.RAISE


@attrs.frozen
class Step:
    """What to do after a failed try: its `Action`, and for a retry the seconds to wait
    before it (None: the retry budget is spent, so the failure is raised)."""

    action: Action
    delay: float | None = None

    @property
    def resign(self) -> bool:
        """Sign a fresh token and try once more (a token the server's clock refused)."""
        return self.action is Action.RESIGN


def next_step(
    policy: RetryPolicy,
    error: KlingError,
    *,
    create: bool,
    retry: int,
    elapsed: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> Step:
    """The one retry decision of queries and creates: what ``error`` means (`classify`)
    and, where it may be retried, the wait before retry number ``retry``
    (`RetryPolicy.retry_delay`, ``elapsed`` seconds into the retry budget). A download
    decides what a media reply means itself (``_media``) and takes its wait from the same
    `RetryPolicy.retry_delay`."""
    action = classify(error, create=create)
    if action is not Action.RETRY:
        return Step(action)
    delay = policy.retry_delay(
        error, retry=retry, elapsed=elapsed, rng=rng, retry_after=retry_after
    )
    return Step(action, delay)


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds or an HTTP date; else None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())
