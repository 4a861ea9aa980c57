"""Specification of the retry and poll policies and of the retry decisions (api.md)."""

from __future__ import annotations

import datetime as dt
import math
import random
from typing import Any

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kling_async import (
    APIError,
    KlingError,
    ListUnavailableError,
    PollPolicy,
    ResponseDecodeError,
    RetryAfterTooLongError,
    RetryPolicy,
    TransportError,
    sansio,
)
from kling_async._policies import Action, Step, classify, next_step, parse_retry_after
from kling_async._schedule import Schedule

UTC = dt.timezone.utc
NOW = dt.datetime(2025, 11, 6, 9, 10, tzinfo=UTC)


def api_error(status: int, code: int | None, *, retry_after: float | None = None) -> APIError:
    """The error sansio would raise for this status and code."""
    cls = sansio.error_class_for(status, code)
    return cls("failed", status=status, code=code, retry_after=retry_after)


def transport(*, sent: bool) -> TransportError:
    return TransportError("connection failed", method="POST", path="/v1/x", sent=sent)


def decode(*, is_json: bool) -> ResponseDecodeError:
    return ResponseDecodeError("bad body", status=200, is_json=is_json)


# --- validation -------------------------------------------------------------------------------


def test_retry_policy_defaults() -> None:
    """The defaults: 5 tries within 60 s, 0.5 s doubling to 10 s, Retry-After capped at 60 s."""
    policy = RetryPolicy()
    expected = (5, 60.0, 0.5, 2.0, 10.0, 0.5, 60.0, 600.0, 10.0, True)
    actual = (
        policy.attempts,
        policy.total_time,
        policy.first_delay,
        policy.growth,
        policy.max_delay,
        policy.jitter,
        policy.retry_after_cap,
        policy.task_slot_timeout,
        policy.task_slot_delay,
        policy.wait,
    )
    assert expected == actual


def test_poll_policy_defaults() -> None:
    """The defaults suit a 30 s to 4 minute job: at 15 s and 30 s, then every 2.75 s (1.9 s by
    list) up to 240 s, then up to 15 s apart; 10 % jitter; learning on."""
    policy = PollPolicy()
    assert (15.0, 2.0, 2.75, 1.9, 30.0, 240.0, 15.0, 0.1, True) == (
        policy.first_delay,
        policy.growth,
        policy.interval,
        policy.list_interval,
        policy.min_duration,
        policy.max_duration,
        policy.max_delay,
        policy.jitter,
        policy.learn,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"attempts": 2.5},
        {"total_time": -1},
        {"total_time": math.nan},
        {"first_delay": -0.1},
        {"first_delay": "1"},
        {"growth": 0.5},
        {"growth": math.nan},
        {"max_delay": -1},
        {"jitter": -0.1},
        {"jitter": 1.1},
        {"jitter": math.nan},
        {"retry_after_cap": -1},
        {"task_slot_timeout": -1},
        {"task_slot_delay": math.nan},
    ],
    ids=repr,
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    """A retry policy refuses values that make no sense, naming the field."""
    (name,) = kwargs
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_delay": -1},
        {"first_delay": math.nan},
        {"growth": 0.99},
        {"max_delay": -0.5},
        {"jitter": 2},
        {"interval": math.nan},
        {"list_interval": -1},
        {"min_duration": True},
        {"max_duration": 10},
    ],
    ids=repr,
)
def test_poll_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    """A poll policy refuses values that make no sense, naming the field."""
    (name,) = kwargs
    with pytest.raises(ValueError, match=name):
        PollPolicy(**kwargs)


def test_policies_accept_boundary_values() -> None:
    """Zero delays, growth 1, jitter 0 or 1, one attempt and no time budget are all valid."""
    retry = RetryPolicy(attempts=1, total_time=0, first_delay=0, growth=1, max_delay=0, jitter=1)
    poll = PollPolicy(
        first_delay=0, growth=1, interval=0, min_duration=0, max_duration=0, max_delay=0, jitter=0
    )
    delay = Schedule(poll).delay(0.0, listed=False, rng=random.Random(0))
    assert (1, 0.0) == (retry.attempts, delay)


def test_policies_are_frozen_keyword_only_values() -> None:
    """Policies are immutable and compare by value."""
    policy = RetryPolicy(attempts=3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.attempts = 4  # type: ignore[misc]  # frozen on purpose
    assert RetryPolicy(attempts=3) == policy
    with pytest.raises(TypeError):
        PollPolicy(1.0)  # type: ignore[misc]  # positional on purpose


# --- backoff ----------------------------------------------------------------------------------


def test_retry_backoff_grows_and_is_capped_without_jitter() -> None:
    """Without jitter the waits are first_delay * growth ** (n - 1), capped at max_delay."""
    policy = RetryPolicy(first_delay=0.5, growth=2, max_delay=3, jitter=0)
    rng = random.Random(0)
    assert [0.5, 1.0, 2.0, 3.0, 3.0] == [policy.backoff(n, rng) for n in range(1, 6)]


def test_poll_delays_follow_the_window_without_jitter() -> None:
    """Sparse before the window (ages 15, 30), dense in it, spacing out to 15 s past it."""
    schedule = Schedule(PollPolicy(jitter=0))
    rng = random.Random(0)
    ages = [0, 5, 15, 20, 30, 100, 239, 300, 1000]
    delays = [schedule.delay(age, listed=False, rng=rng) for age in ages]
    assert [15.0, 10.0, 15.0, 10.0, 2.75, 2.75, 2.75, 8.75, 15.0] == delays
    assert 1.9 == schedule.delay(100, listed=True, rng=rng)


def test_jitter_never_brings_an_early_poll_before_its_point() -> None:
    """An early poll lands on or after its point, so no second poll follows a moment later."""
    schedule = Schedule(PollPolicy())
    rng = random.Random(3)
    for age in (0.0, 3.0, 14.9, 15.0, 29.0):
        target = 15.0 if age < 15 else 30.0
        landing = age + schedule.delay(age, listed=False, rng=rng)
        assert target <= landing <= target + (target - age) * 0.1 + 1e-9


def test_list_refreshes_are_not_jittered() -> None:
    """A list refresh serves the whole session: its cadence is the interval itself."""
    schedule = Schedule(PollPolicy())
    assert {1.9} == {schedule.delay(60, listed=True, rng=random.Random(n)) for n in range(20)}


def test_the_schedule_learns_the_window_from_tasks_seen_succeed() -> None:
    """Three successes of 100-120 s move the window's start to about 87 s (its end stays)."""
    schedule = Schedule(PollPolicy(jitter=0))
    for seconds in (100, 110, 120):
        schedule.observe(seconds)
    start, end = schedule.window()
    assert (87.25, 240.0) == (start, end)
    assert 30.0 == schedule.delay(30, listed=False, rng=random.Random(0))  # early: sparse
    for seconds in (250, 300, 310):
        schedule.observe(seconds)
    assert (87.25, 387.5) == schedule.window()  # slower ones than expected move the end


def test_the_schedule_does_not_learn_when_told_not_to() -> None:
    """``learn=False`` keeps the policy's window whatever the session sees."""
    schedule = Schedule(PollPolicy(learn=False))
    for seconds in (100, 110, 120):
        schedule.observe(seconds)
    assert (30.0, 240.0) == schedule.window()


def test_jitter_shortens_each_wait_by_at_most_its_fraction() -> None:
    """With jitter j every wait lies in [nominal * (1 - j), nominal]."""
    policy = RetryPolicy(first_delay=1, growth=2, max_delay=8, jitter=0.5)
    rng = random.Random(1234)
    nominal = [1, 2, 4, 8, 8, 8, 8, 8]
    delays = [policy.backoff(n, rng) for n in range(1, 9)]
    assert all(d * 0.5 <= w <= d for d, w in zip(nominal, delays, strict=True))
    assert len(set(delays)) == len(delays)  # jitter does spread the waits


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    """The randomness is injected: the same seed gives the same waits."""
    schedule = Schedule(PollPolicy())
    first = [schedule.delay(n * 10, listed=False, rng=random.Random(7)) for n in range(6)]
    again = [schedule.delay(n * 10, listed=False, rng=random.Random(7)) for n in range(6)]
    assert first == again


@given(
    first=st.floats(min_value=0, max_value=100),
    growth=st.floats(min_value=1, max_value=1e6),
    cap=st.floats(min_value=0, max_value=1000),
    jitter=st.floats(min_value=0, max_value=1),
    n=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
@example(first=1, growth=1e6, cap=10, jitter=0, n=100, seed=0)
def test_backoff_stays_between_zero_and_the_cap(
    first: float, growth: float, cap: float, jitter: float, n: int, seed: int
) -> None:
    """For any valid policy and any attempt number the wait is a number in [0, max_delay]."""
    retry = RetryPolicy(first_delay=first, growth=growth, max_delay=cap, jitter=jitter)
    assert 0 <= retry.backoff(n, random.Random(seed)) <= cap
    poll = PollPolicy(first_delay=first, growth=growth, max_delay=cap, jitter=jitter)
    wait = Schedule(poll).delay(float(n), listed=False, rng=random.Random(seed))
    assert 0 <= wait <= max(cap, poll.interval, poll.min_duration * (1 + jitter))


def test_slot_delay_is_capped_by_task_slot_delay() -> None:
    """Waiting for a 1303 slot grows like backoff but up to ``task_slot_delay``."""
    policy = RetryPolicy(first_delay=1, growth=2, jitter=0, max_delay=2, task_slot_delay=5)
    rng = random.Random(0)
    assert [1.0, 2.0, 4.0, 5.0, 5.0] == [policy.slot_delay(n, rng) for n in range(1, 6)]


def test_slot_wait_ends_at_the_slot_timeout_and_honours_a_retry_after_in_full() -> None:
    """A 1303 wait is cut at ``task_slot_timeout``; a freed slot may end it sooner unless the
    server asked for a ``Retry-After``, which is waited in full or, past the timeout, refused."""
    policy = RetryPolicy(first_delay=1, growth=2, jitter=0, task_slot_delay=5, task_slot_timeout=6)
    rng = random.Random(0)
    refusal = api_error(429, 1303)

    assert (4.0, True) == policy.slot_wait(refusal, wait_number=3, waited=0, rng=rng)
    assert (2.0, True) == policy.slot_wait(refusal, wait_number=3, waited=4, rng=rng)
    assert policy.slot_wait(refusal, wait_number=1, waited=6, rng=rng) is None
    asked = api_error(429, 1303, retry_after=3)
    assert (3.0, False) == policy.slot_wait(asked, wait_number=1, waited=0, rng=rng)
    assert policy.slot_wait(asked, wait_number=1, waited=4, rng=rng) is None


# --- instant ----------------------------------------------------------------------------------


def test_instant_poll_policy_never_waits() -> None:
    """``PollPolicy.instant()`` polls again at once, however many polls."""
    schedule = Schedule(PollPolicy.instant())
    rng = random.Random(0)
    for seconds in (1, 2, 3):
        schedule.observe(seconds)  # learning is off too
    delays = [schedule.delay(n, listed=n % 2 == 0, rng=rng) for n in range(50)]
    assert [0.0] * 50 == delays


def test_instant_retry_policy_never_waits() -> None:
    """``RetryPolicy.instant()`` removes backoff and the 1303 slot wait."""
    policy = RetryPolicy.instant()
    rng = random.Random(0)
    waits = [policy.backoff(n, rng) for n in range(1, 20)] + [
        policy.slot_delay(n, rng) for n in range(1, 20)
    ]
    assert [0.0] * 38 == waits


def test_instant_retry_policy_keeps_the_same_retries() -> None:
    """``instant()`` keeps the attempts and budgets; only the waiting goes."""
    policy = RetryPolicy.instant()
    assert (5, 60.0, 60.0, False) == (
        policy.attempts,
        policy.total_time,
        policy.retry_after_cap,
        policy.wait,
    )


def test_instant_retry_policy_accepts_changes() -> None:
    """``instant(attempts=2)`` is an instant policy with two attempts."""
    policy = RetryPolicy.instant(attempts=2)
    assert (2, False) == (policy.attempts, policy.wait)


def test_instant_retry_policy_ignores_retry_after_under_the_cap() -> None:
    """With ``instant()`` a Retry-After under the cap does not make the test sleep."""
    error = api_error(429, 1302, retry_after=30)
    assert 0.0 == RetryPolicy.instant().retry_delay(error, retry=1, elapsed=0, rng=random.Random())


# --- retry_delay --------------------------------------------------------------------------------


def test_retry_delay_allows_attempts_minus_one_retries() -> None:
    """``attempts=3`` means one try and two retries: the third retry is refused (None)."""
    policy = RetryPolicy(attempts=3, first_delay=1, growth=2, jitter=0)
    error = api_error(429, 1302)
    rng = random.Random(0)
    delays = [policy.retry_delay(error, retry=n, elapsed=0, rng=rng) for n in (1, 2, 3, 4)]
    assert [1.0, 2.0, None, None] == delays


def test_retry_delay_with_one_attempt_never_retries() -> None:
    """``attempts=1`` means no retry at all."""
    policy = RetryPolicy(attempts=1)
    assert (
        policy.retry_delay(transport(sent=False), retry=1, elapsed=0, rng=random.Random()) is None
    )


@pytest.mark.parametrize(
    ("elapsed", "expected"), [(0.0, 4.0), (6.0, 4.0), (6.5, None), (10.0, None)]
)
def test_retry_delay_respects_the_total_time_budget(elapsed: float, expected: float | None) -> None:
    """A retry whose wait would end past ``total_time`` is refused (None)."""
    policy = RetryPolicy(total_time=10, first_delay=4, jitter=0)
    actual = policy.retry_delay(
        transport(sent=False), retry=1, elapsed=elapsed, rng=random.Random()
    )
    assert expected == actual


def test_retry_after_longer_than_backoff_is_honoured() -> None:
    """The server's Retry-After wins over a shorter backoff."""
    policy = RetryPolicy(first_delay=1, jitter=0)
    error = api_error(429, 1302, retry_after=7)
    assert 7.0 == policy.retry_delay(error, retry=1, elapsed=0, rng=random.Random())


def test_retry_after_shorter_than_backoff_keeps_the_backoff() -> None:
    """A Retry-After shorter than the backoff does not shorten the wait."""
    policy = RetryPolicy(first_delay=4, jitter=0)
    error = api_error(503, 5001, retry_after=1)
    assert 4.0 == policy.retry_delay(error, retry=1, elapsed=0, rng=random.Random())


def test_retry_after_equal_to_the_cap_is_honoured() -> None:
    """Exactly the cap is still within it."""
    policy = RetryPolicy(first_delay=0, jitter=0, retry_after_cap=60, total_time=100)
    error = api_error(429, 1302, retry_after=60)
    assert 60.0 == policy.retry_delay(error, retry=1, elapsed=0, rng=random.Random())


def test_retry_after_past_the_total_time_stops_retrying() -> None:
    """A Retry-After that would end past ``total_time`` is refused like any wait."""
    policy = RetryPolicy(total_time=10, retry_after_cap=60)
    error = api_error(429, 1302, retry_after=30)
    assert policy.retry_delay(error, retry=1, elapsed=0, rng=random.Random()) is None


@pytest.mark.parametrize("policy", [RetryPolicy(), RetryPolicy.instant()], ids=["real", "instant"])
def test_retry_after_over_the_cap_fails_at_once(policy: RetryPolicy) -> None:
    """A Retry-After over the cap raises RetryAfterTooLongError with both numbers and the cause."""
    error = api_error(429, 1302, retry_after=3600)
    with pytest.raises(RetryAfterTooLongError) as info:
        policy.retry_delay(error, retry=1, elapsed=0, rng=random.Random())
    raised = info.value
    expected = (3600.0, 60.0, error, error)
    assert expected == (raised.retry_after, raised.cap, raised.error, raised.__cause__)
    assert isinstance(raised, KlingError)
    assert "3600" in str(raised)
    assert "60" in str(raised)


def test_retry_after_cap_is_configurable() -> None:
    """``retry_after_cap`` decides what is too long."""
    error = api_error(429, 1302, retry_after=90)
    policy = RetryPolicy(retry_after_cap=120, total_time=200, jitter=0)
    assert 90.0 == policy.retry_delay(error, retry=1, elapsed=0, rng=random.Random())
    with pytest.raises(RetryAfterTooLongError):
        RetryPolicy(retry_after_cap=30).retry_delay(error, retry=1, elapsed=0, rng=random.Random())


def test_errors_without_retry_after_use_backoff() -> None:
    """Errors that carry no Retry-After (transport, decode) just back off."""
    policy = RetryPolicy(first_delay=2, jitter=0)
    rng = random.Random(0)
    delays = [
        policy.retry_delay(error, retry=1, elapsed=0, rng=rng)
        for error in (transport(sent=True), decode(is_json=False), api_error(502, None))
    ]
    assert [2.0, 2.0, 2.0] == delays


# --- classify: create -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (transport(sent=False), Action.RETRY),
        (transport(sent=True), Action.RECONCILE),
        (api_error(429, 1302), Action.RETRY),
        (api_error(429, 1303), Action.WAIT_SLOT),
        (api_error(503, 5001), Action.RETRY),
        (api_error(401, 1004), Action.RESIGN),
        (api_error(500, 5000), Action.RECONCILE),
        (api_error(504, 5002), Action.RECONCILE),
        (api_error(502, None), Action.RECONCILE),
        (api_error(503, None), Action.RECONCILE),
        (api_error(504, None), Action.RECONCILE),
        (decode(is_json=False), Action.RECONCILE),
        (decode(is_json=True), Action.RECONCILE),
    ],
    ids=lambda value: value.name if isinstance(value, Action) else _describe(value),
)
def test_classify_create(error: KlingError, action: Action) -> None:
    """A create is repeated only where certainly nothing was made; else it is reconciled."""
    assert action is classify(error, create=True)


# --- classify: query ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (transport(sent=False), Action.RETRY),
        (transport(sent=True), Action.RETRY),
        (api_error(429, 1302), Action.RETRY),
        (api_error(429, 1303), Action.RETRY),
        (api_error(500, 5000), Action.RETRY),
        (api_error(503, 5001), Action.RETRY),
        (api_error(504, 5002), Action.RETRY),
        (api_error(502, None), Action.RETRY),
        (api_error(401, 1004), Action.RESIGN),
        (api_error(401, 1003), Action.RESIGN),
        (decode(is_json=False), Action.RETRY),
        (decode(is_json=True), Action.RAISE),
    ],
    ids=lambda value: value.name if isinstance(value, Action) else _describe(value),
)
def test_classify_query(error: KlingError, action: Action) -> None:
    """A query repeats anything transient and raises at once on a wrong-shaped reply."""
    assert action is classify(error, create=False)


# --- classify: never retried ------------------------------------------------------------------


@pytest.mark.parametrize("create", [True, False], ids=["create", "query"])
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, 1000),
        (401, 1001),
        (401, 1002),
        (429, 1100),
        (429, 1101),
        (429, 1102),
        (403, 1103),
        (400, 1200),
        (400, 1201),
        (404, 1202),
        (404, 1203),
        (400, 1300),
        (400, 1301),
        (429, 1304),
    ],
)
def test_classify_never_retries_refusals(status: int, code: int, create: bool) -> None:
    """Authentication (but 1003/1004), account, invalid, not found, policy: raise at once."""
    assert Action.RAISE is classify(api_error(status, code), create=create)


@pytest.mark.parametrize("create", [True, False], ids=["create", "query"])
def test_classify_raises_errors_that_are_not_about_the_try(create: bool) -> None:
    """Errors that no retry can fix (a missing list endpoint) are raised."""
    assert Action.RAISE is classify(ListUnavailableError("no list"), create=create)


def _describe(error: KlingError) -> str:
    if isinstance(error, TransportError):
        return f"transport-sent={error.sent}"
    if isinstance(error, ResponseDecodeError):
        return f"decode-json={error.is_json}"
    assert isinstance(error, APIError)
    return f"{error.status}-{error.code}"


# --- parse_retry_after ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("30", 30.0), (" 120 ", 120.0)])
def test_parse_retry_after_seconds(value: str, seconds: float) -> None:
    """Delta-seconds are read as seconds."""
    assert seconds == parse_retry_after(value, NOW)


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 06 Nov 2025 09:11:30 GMT",  # IMF-fixdate
        "Thursday, 06-Nov-25 09:11:30 GMT",  # RFC 850
        "Thu Nov  6 09:11:30 2025",  # asctime
    ],
)
def test_parse_retry_after_http_date(value: str) -> None:
    """An HTTP date in any of the three formats RFC 9110 allows is the seconds until then."""
    assert 90.0 == parse_retry_after(value, NOW)


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    """A date already past means retry now, not a negative wait."""
    assert 0.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "-5", "1.5", "30s", "²", "Thu, 99 Nov"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    """Anything that is neither delta-seconds nor an HTTP date is ignored (None)."""
    assert parse_retry_after(value, NOW) is None


@given(st.text(max_size=40))
@example("²")
@example("٣")
def test_parse_retry_after_never_raises(value: str) -> None:
    """Whatever a server puts in the header, the answer is None or a wait of at least 0."""
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or seconds >= 0


@given(st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2090, 1, 1)))
def test_parse_retry_after_any_http_date(when: dt.datetime) -> None:
    """Any IMF-fixdate gives the whole seconds from now until then, or 0 when past."""
    aware = when.replace(microsecond=0, tzinfo=UTC)
    header = aware.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert max(0.0, (aware - NOW).total_seconds()) == parse_retry_after(header, NOW)


# --- the one retry decision ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "create", "expected"),
    [
        (api_error(500, 5000), False, Step(Action.RETRY, 1.0)),  # a query repeats a 5xx
        (api_error(500, 5000), True, Step(Action.RECONCILE)),  # a create looks it up
        (transport(sent=False), True, Step(Action.RETRY, 1.0)),  # never left: resend
        (api_error(429, 1303), True, Step(Action.WAIT_SLOT)),  # a create waits for a slot
        (api_error(429, 1303), False, Step(Action.RETRY, 1.0)),
        (api_error(401, 1004), False, Step(Action.RESIGN)),  # a fresh token, once
        (api_error(400, 1201), True, Step(Action.RAISE)),  # a refusal is final
    ],
)
def test_next_step_says_what_a_failure_means_and_how_long_to_wait(
    error: KlingError, create: bool, expected: Step
) -> None:
    """Queries, creates and downloads share one decision: the action and the retry's wait."""
    policy = RetryPolicy(first_delay=1, growth=2, jitter=0)
    step = next_step(policy, error, create=create, retry=1, elapsed=0.0, rng=random.Random(0))
    assert expected == step
    assert (expected.action is Action.RESIGN) == step.resign


def test_next_step_ends_the_retries_when_the_budget_is_spent() -> None:
    """Past ``attempts`` or ``total_time`` a retryable failure has no delay: it is raised."""
    policy = RetryPolicy(attempts=3, total_time=10, first_delay=1, growth=2, jitter=0)
    rng = random.Random(0)
    error = api_error(500, 5000)
    assert 2.0 == next_step(policy, error, create=False, retry=2, elapsed=0, rng=rng).delay
    assert next_step(policy, error, create=False, retry=3, elapsed=0, rng=rng).delay is None
    assert next_step(policy, error, create=False, retry=1, elapsed=9.5, rng=rng).delay is None


def test_next_step_honours_a_retry_after_given_apart_from_the_error() -> None:
    """A media host's Retry-After (not an APIError's) lengthens the wait the same way."""
    policy = RetryPolicy(first_delay=1, jitter=0)
    step = next_step(
        policy,
        transport(sent=False),
        create=False,
        retry=1,
        elapsed=0,
        rng=random.Random(0),
        retry_after=7.0,
    )
    assert Step(Action.RETRY, 7.0) == step
