"""The session-wide pace: turns in order from a bucket that never goes below zero, a cut once
per round trip on 1302, a recovery that reaches every request waiting its turn."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_async import KlingSession, PollPolicy, RetryPolicy, TaskHandle
from kling_async._pace import Pace
from kling_async.testing import Fault, KlingEmulator

WAITS = 100


def throttled_pace(rate: float = 100.0, now: float = 1.0) -> Pace:
    """A pace that has just met a 1302 while the session sent ``rate`` requests a second."""
    pace = Pace()
    sends = int(rate * now)
    for n in range(sends):
        pace.sent(n / rate)
    pace.throttled(now, sent_at=now)
    return pace


def serve(pace: Pace, tickets: list[int], now: float) -> list[int]:
    """The tickets whose turn has come at ``now`` (asking in the order given)."""
    return [ticket for ticket in tickets if pace.turn(ticket, now) == 0.0]


# -- values in, values out -------------------------------------------------------------------------


def test_the_pace_is_off_until_a_1302() -> None:
    """No 1302 seen: every turn comes at once."""
    pace = Pace()
    assert [0.0] * 100 == [pace.turn(pace.join(), n / 1000) for n in range(100)]
    assert (None, 0) == (pace.rate, pace.waiting)


def test_a_1302_cuts_the_rate_once_per_round_trip() -> None:
    """Many 1302s for requests sent before the cut cut once; one sent after it cuts again."""
    pace = throttled_pace(rate=100.0, now=1.0)
    first = pace.rate
    for _ in range(50):
        pace.throttled(1.01, sent_at=0.995)  # sent before the cut: no news
    assert first == pace.rate
    assert first is not None
    assert first < 100
    pace.throttled(1.02, sent_at=1.01)  # sent after it: the cut rate met a 1302 too
    assert pace.rate is not None
    assert pace.rate < first


def test_the_bucket_never_goes_below_zero() -> None:
    """However many requests ask at once, one token lets one go and none borrows ahead."""
    pace = throttled_pace()
    tickets = [pace.join() for _ in range(200)]
    assert [tickets[0]] == serve(pace, tickets, 1.0)
    assert 0.0 <= pace.tokens
    assert 199 == pace.waiting
    assert [] == serve(pace, tickets[1:], 1.0)
    assert 0.0 <= pace.tokens


def test_the_first_in_line_sleeps_until_the_next_token_only() -> None:
    """The sleep of the first waiting ticket is the time to the next token, however long the
    line behind it: nobody reserves a slot far in the future."""
    pace = throttled_pace()
    rate = pace.rate
    assert rate is not None
    tickets = [pace.join() for _ in range(200)]
    serve(pace, tickets, 1.0)
    head_sleep = pace.turn(tickets[1], 1.0)
    assert head_sleep == pytest.approx(1 / rate)
    sleeps = [pace.turn(t, 1.0) for t in tickets[1:]]
    assert sleeps == sorted(sleeps)  # later in line, later turn
    assert [tickets[1]] == serve(pace, tickets[1:], 1.0 + head_sleep)


def test_turns_go_in_the_order_they_were_asked_for() -> None:
    """Tickets are served first come, first served, whoever asks first after a token."""
    pace = throttled_pace()
    rate = pace.rate
    assert rate is not None
    tickets = [pace.join() for _ in range(10)]
    order: list[int] = []
    now = 1.0
    while len(order) < 10:
        waiting = [t for t in reversed(tickets) if t not in order]  # the last in line first
        order += serve(pace, waiting, now)
        now += 1 / rate
    assert tickets == order


def test_a_rate_that_climbs_back_reaches_the_waiting_requests() -> None:
    """After the rate rises, asking again gives a shorter sleep, and the pace says to wake
    the sleepers."""
    pace = throttled_pace(rate=2.0, now=10.0)
    tickets = [pace.join() for _ in range(50)]
    serve(pace, tickets, 10.0)
    before = pace.turn(tickets[-1], 10.0)
    now = 10.0
    woken = False
    for _ in range(40):  # replies that are not 1302s while the session sends what it may
        now += 0.1
        pace.sent(now)
        woken = pace.succeeded(now) or woken
    assert woken
    after = pace.turn(tickets[-1], now)
    assert after < (before - (now - 10.0)) / 2  # far sooner than the old rate would give


def test_a_ticket_given_up_moves_the_line_up() -> None:
    """A request that stops waiting gives its place to those behind it."""
    pace = throttled_pace()
    tickets = [pace.join() for _ in range(3)]
    serve(pace, tickets, 1.0)
    behind = pace.turn(tickets[2], 1.0)
    pace.leave(tickets[1])
    assert 1 == pace.waiting
    assert pace.turn(tickets[2], 1.0) < behind


def test_the_rate_climbs_back_gradually_after_a_1302() -> None:
    """After a cut the rate grows along a curve, not back to full speed at once."""
    pace = Pace()
    now = 0.0
    for _ in range(200):
        now += 0.01
        pace.sent(now)
    pace.throttled(now, sent_at=now)
    cut = pace.rate
    rates = []
    for _ in range(30):
        now += 0.5
        for _ in range(20):
            pace.sent(now)
        pace.succeeded(now)
        rates.append(pace.rate)
    assert cut is not None
    assert all(r is not None for r in rates)
    assert rates == sorted(rates)  # never falls without a 1302
    assert rates[0] is not None
    assert rates[0] < cut * 1.2  # and does not jump back


def test_a_line_left_by_a_burst_is_served_within_seconds() -> None:
    """Cut to the floor by a burst, the pace still serves 100 waiting requests within 10 s of
    pace time once the replies are good again (a driver that asks, sleeps, asks again)."""
    pace = throttled_pace(rate=40.0, now=1.0)
    now = 1.0
    for _ in range(20):  # each round trip of a 2 s burst cuts again, down to the floor
        now += 0.1
        pace.sent(now)
        pace.throttled(now, sent_at=now)
    burst_end = now
    due = {pace.join(): now for _ in range(WAITS)}  # ticket -> when it asks again
    while due:
        ticket, now = min(due.items(), key=lambda item: (item[1], item[0]))
        sleep = pace.turn(ticket, now)
        if sleep > 0:
            due[ticket] = now + min(sleep, 2.0)
            continue
        del due[ticket]
        pace.sent(now)
        if pace.succeeded(now):
            due = dict.fromkeys(due, now)  # woken: every sleeper asks again
    assert now - burst_end < 10


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "turn", "leave", "sent", "ok", "1302"]),
            st.floats(0, 0.5),
            st.integers(0, 30),
        ),
        max_size=200,
    )
)
def test_no_sequence_of_events_takes_a_token_that_is_not_there(
    events: list[tuple[str, float, int]],
) -> None:
    """Whatever happens in whatever order, tokens stay >= 0 and each ticket goes once."""
    pace = Pace()
    now = 0.0
    tickets: list[int] = []
    served: set[int] = set()
    for kind, step, pick in events:
        now += step
        if kind == "join":
            tickets.append(pace.join())
        elif kind in ("turn", "leave") and tickets:
            ticket = tickets[pick % len(tickets)]
            if kind == "leave":
                pace.leave(ticket)
                tickets.remove(ticket)
            elif pace.turn(ticket, now) == 0.0:
                assert ticket not in served
                served.add(ticket)
                tickets.remove(ticket)
        elif kind == "sent":
            pace.sent(now)
        elif kind == "ok":
            pace.succeeded(now)
        elif kind == "1302":
            pace.throttled(now, sent_at=now - step)
        assert pace.tokens >= 0.0
        assert len(tickets) == pace.waiting or not pace.enabled


# -- through the session ---------------------------------------------------------------------------


async def _tasks(emulator: KlingEmulator, count: int) -> list[str]:
    """Ids of ``count`` tasks made by another session (a wait on one polls at once)."""
    async with KlingSession(
        emulator.api_key,
        base_url=emulator.gateway_url,
        retry_policy=RetryPolicy.instant(),
        poll_policy=PollPolicy.instant(),
    ) as maker:
        return [(await maker.extend(f"vid-{n}")).task_id for n in range(count)]


@pytest.mark.anyio
@pytest.mark.crash
async def test_a_burst_of_1302_does_not_stall_polling_waits() -> None:
    """100 polling waits (default policies) meet 2 s of 1302s: fewer than 100 requests meet
    them, and every wait is done well within a minute (not after minutes of silence)."""
    async with KlingEmulator(polls_to_start=0, polls_to_finish=0) as emulator:
        ids = await _tasks(emulator, WAITS)
        emulator.requests.clear()
        async with KlingSession(
            emulator.api_key, base_url=emulator.gateway_url, list_refresh=False
        ) as session:
            done: list[TaskHandle] = []

            async def wait(handle: TaskHandle) -> None:
                await handle.wait()
                done.append(handle)

            emulator.inject(Fault.rate_limited(1302), route="query", seconds=2)
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    for task_id in ids:  # the polls spread over one poll interval
                        group.start_soon(wait, session.task(task_id))
                        await anyio.sleep(PollPolicy().interval / WAITS)
            rate_limit = session.statistics().rate_limit

    met = [r for r in emulator.requests if r.fault is not None]
    assert WAITS == len(done)
    assert rate_limit is not None  # the burst was met and turned the pace on
    assert 0 < len(met) < WAITS
    # Each task's first answered query shows it done; the other requests met the burst.
    assert WAITS + len(met) == len(emulator.requests)
