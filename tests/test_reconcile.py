"""The look-up's rules for a create in doubt, and the server's clock: values in, values out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest

from kling_async import Task, TaskStatus, Video
from kling_async._clock import ServerClock, parse_http_date
from kling_async._reconcile import (
    LOOK_EVERY,
    MARGIN,
    Absent,
    Ambiguous,
    Doubt,
    Found,
    Verdict,
    look_delay,
    must_answer,
    place,
    read_next_page,
    set_back,
    time_left,
    verdict,
)
from kling_async.models import TaskInfo

SENT = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)  # on the server's clock
WINDOW = dt.timedelta(seconds=130)
SECOND = dt.timedelta(seconds=1)


def _task(
    task_id: str,
    *,
    after: float | None = 1.0,
    video: str | None = "vid-1",
    external: str | None = None,
) -> Task:
    """A listed task made ``after`` seconds after the send (None: no time given)."""
    return Task(
        task_id=task_id,
        status=TaskStatus.SUBMITTED,
        created_at=None if after is None else SENT + dt.timedelta(seconds=after),
        info=TaskInfo(
            parent_video=None if video is None else Video(id=video),
            external_task_id=external,
        ),
    )


def _doubt(
    *,
    external: str | None = None,
    sent_at: dt.datetime | None = SENT,
    uncertainty: float = 1.0,
    video: str = "vid-1",
) -> Doubt:
    return Doubt(
        video_id=video,
        external_task_id=external,
        sent_at=sent_at,
        window=WINDOW,
        uncertainty=dt.timedelta(seconds=uncertainty),
    )


def _verdict(
    doubt: Doubt,
    tasks: Sequence[Task],
    *,
    rivals: Sequence[Doubt] = (),
    claimed: Sequence[str] = (),
    keeps_external_ids: bool = False,
    covered: bool = True,
    final: bool = True,
) -> Verdict | None:
    return verdict(
        doubt,
        tasks,
        claimed=claimed,
        rivals=rivals,
        keeps_external_ids=keeps_external_ids,
        covered=covered,
        final=final,
    )


# -- verdict --------------------------------------------------------------------------------


def test_a_task_with_the_exact_external_id_wins_over_everything() -> None:
    """The create's own external id settles it, whatever else is listed or in doubt."""
    mine = _task("2", after=-100.0, external="ext-mine")
    listed = [_task("1"), mine, _task("3", after=5.0)]
    rival = _doubt(external=None)

    assert Found(mine) == _verdict(
        _doubt(external="ext-mine"), listed, rivals=[rival], covered=False, final=False
    )


def test_a_task_with_another_external_id_is_never_a_candidate() -> None:
    """A task stamped with someone else's external id is not this create's."""
    theirs = _task("1", external="ext-theirs")

    assert not _doubt(external="ext-mine").may_own(theirs, keeps_external_ids=False)
    assert not _doubt(external=None).may_own(theirs, keeps_external_ids=False)
    assert Absent() == _verdict(_doubt(external="ext-mine"), [theirs])


def test_where_the_server_keeps_external_ids_an_unstamped_task_is_not_ours() -> None:
    """A create that carried an external id would have it echoed: a bare task is another's."""
    bare = _task("1")
    doubt = _doubt(external="ext-mine")

    assert Absent() == _verdict(doubt, [bare], keeps_external_ids=True)
    assert Found(bare) == _verdict(doubt, [bare], keeps_external_ids=False)


def test_one_candidate_made_after_the_send_is_found() -> None:
    """The only task for the video, made after the send, is the create's: no wait needed."""
    made = _task("1", after=2.0)

    assert Found(made) == _verdict(_doubt(), [made, _task("2", video="vid-9")], final=False)


def test_one_candidate_made_before_the_send_is_ambiguous() -> None:
    """A task older than the send by more than the clock's uncertainty cannot be told apart."""
    older = _task("1", after=-10.0)  # inside the margin, outside the uncertainty

    assert _verdict(_doubt(uncertainty=1.0), [older], final=False) is None
    assert (older,) == _candidates(_verdict(_doubt(uncertainty=1.0), [older]))
    assert Found(older) == _verdict(_doubt(uncertainty=11.0), [older])


def test_a_rival_in_doubt_for_the_same_video_makes_it_ambiguous() -> None:
    """Another create in doubt that may have made the one candidate: never guess."""
    made = _task("1", after=2.0)
    rival = _doubt(sent_at=SENT + SECOND)
    elsewhere = _doubt(video="vid-2")

    assert _verdict(_doubt(), [made], rivals=[rival], final=False) is None
    assert (made,) == _candidates(_verdict(_doubt(), [made], rivals=[rival]))
    assert Found(made) == _verdict(_doubt(), [made], rivals=[elsewhere])


def test_a_task_claimed_by_another_create_is_not_a_candidate() -> None:
    """A task recorded for another key is no candidate: the look-up goes on without it."""
    assert Absent() == _verdict(_doubt(), [_task("1")], claimed=["1"])


def test_no_candidate_in_a_covered_final_look_is_absent() -> None:
    """Only a look that read back past the send, after the window closed, proves absence."""
    others = [_task("1", video="vid-2"), _task("2", after=-7200.0)]

    assert Absent() == _verdict(_doubt(), others)
    assert _verdict(_doubt(), others, final=False) is None


def test_a_task_for_the_video_made_after_the_window_is_not_taken_nor_absence() -> None:
    """A clock stepped since the send could misplace it: made an hour after the send, a task
    for the video is not the create's, but it no longer proves the create made nothing."""
    later = _task("3", after=3600.0)

    verdict = _verdict(_doubt(), [later])

    assert isinstance(verdict, Ambiguous)
    assert (later,) == verdict.candidates


def test_a_look_that_did_not_reach_the_send_is_ambiguous_at_the_end() -> None:
    """The list not read back to the send: look again, and at the end say it cannot tell."""
    assert _verdict(_doubt(), [], covered=False, final=False) is None
    assert () == _candidates(_verdict(_doubt(), [], covered=False))


def test_a_send_that_cannot_be_placed_is_settled_only_by_its_external_id() -> None:
    """With no server time for the send, a bare candidate is never taken; the id still is."""
    unplaced = _doubt(sent_at=None, external="ext-mine")
    bare = _task("1")
    stamped = _task("2", external="ext-mine")

    assert _verdict(unplaced, [bare], final=False) is None
    assert (bare,) == _candidates(_verdict(unplaced, [bare]))
    assert () == _candidates(_verdict(unplaced, []))
    assert Found(stamped) == _verdict(unplaced, [bare, stamped], final=False)


def _candidates(result: Verdict | None) -> tuple[Task, ...]:
    assert isinstance(result, Ambiguous), result
    return result.candidates


# -- Doubt.may_own --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (_task("in", after=0.0), True),
        (_task("early", after=-(MARGIN + 2 * SECOND).total_seconds()), False),
        (_task("just-early", after=-MARGIN.total_seconds()), True),
        (_task("late", after=(WINDOW + MARGIN + 2 * SECOND).total_seconds()), False),
        (_task("just-late", after=(WINDOW + MARGIN).total_seconds()), True),
        (_task("no-time", after=None), True),
        (_task("other-video", video="vid-2"), False),
        (_task("no-video", video=None), False),
    ],
    ids=lambda value: value.task_id if isinstance(value, Task) else None,
)
def test_a_doubt_may_own_a_task_of_its_video_within_its_window(task: Task, expected: bool) -> None:
    """Its video, made from the send less the margin to the window's end plus the margin."""
    assert expected == _doubt(uncertainty=1.0).may_own(task, keeps_external_ids=False)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (_task("in", video=None), True),
        (_task("late", video=None, after=(WINDOW + MARGIN + 2 * SECOND).total_seconds()), False),
        (_task("an-extend", video="vid-1"), False),
    ],
    ids=lambda value: value.task_id if isinstance(value, Task) else None,
)
def test_a_source_creates_doubt_may_own_a_task_without_a_source_within_its_window(
    task: Task, expected: bool
) -> None:
    """A text/image-to-video create (no source video) may own its family's tasks in its window."""
    assert expected == _doubt(video="").may_own(task, keeps_external_ids=False)


# -- read_next_page -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ([_task("1"), _task("2", after=-10.0)], False),  # short page: the list ends here
        ([_task("1"), _task("2"), _task("3", after=-10.0)], True),  # reaches back to earliest
        ([_task("1"), _task("2"), _task("3", after=-60.0)], False),  # older than earliest
        ([_task(str(n), after=None) for n in range(3)], True),  # no times: cannot tell
    ],
)
def test_the_next_page_is_read_while_a_full_page_reaches_back_to_the_send(
    page: list[Task], expected: bool
) -> None:
    """A full page whose oldest task is not older than ``earliest`` may have more after it."""
    assert expected == read_next_page(page, 3, SENT - dt.timedelta(seconds=31))


# -- ServerClock ----------------------------------------------------------------------------

LOCAL = dt.datetime(2026, 3, 1, 11, 58, 0, tzinfo=dt.timezone.utc)


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def _interval(clock: ServerClock) -> tuple[dt.timedelta, dt.timedelta] | None:
    offset = clock.offset
    if offset is None:
        return None
    return offset - clock.uncertainty, offset + clock.uncertainty


def test_a_clock_knows_nothing_until_the_server_says_the_time() -> None:
    """No offset, no uncertainty, and nothing carried onto the server's clock."""
    clock = ServerClock()
    learned = (clock.offset, clock.uncertainty, clock.to_server(LOCAL))

    assert (None, dt.timedelta(0), None) == learned


def test_each_reply_narrows_the_offset() -> None:
    """Each reply bounds the offset; the interval is the intersection of the bounds."""
    clock = ServerClock()
    clock.observe(LOCAL + _seconds(100), LOCAL, LOCAL + _seconds(2))
    first = _interval(clock)
    clock.observe(LOCAL + _seconds(109.8), LOCAL + _seconds(10), LOCAL + _seconds(10.5))

    assert (_seconds(98), _seconds(100.001)) == first
    assert (_seconds(99.3), _seconds(99.801)) == _interval(clock)
    assert LOCAL + _seconds(99.5505) == clock.to_server(LOCAL)


def test_a_reply_that_contradicts_the_interval_starts_it_over() -> None:
    """A clock stepped between replies: the newest reply alone is believed."""
    clock = ServerClock()
    clock.observe(LOCAL + _seconds(100), LOCAL, LOCAL + _seconds(2))
    clock.observe(LOCAL + _seconds(10 - 3600), LOCAL + _seconds(10), LOCAL + _seconds(11))

    assert (_seconds(-3601), _seconds(-3599.999)) == _interval(clock)


def test_a_reply_received_before_it_was_sent_is_ignored() -> None:
    """The local clock stepped back during the exchange: the reply says nothing."""
    clock = ServerClock()
    clock.observe(LOCAL, LOCAL + _seconds(5), LOCAL)

    assert clock.offset is None


def test_a_date_header_narrows_to_whole_seconds() -> None:
    """A ``Date`` header is read to the second; a bad one teaches nothing."""
    clock = ServerClock()
    clock.observe_date("not a date", LOCAL, LOCAL)
    clock.observe_date(None, LOCAL, LOCAL)
    unknown = clock.offset
    clock.observe_date("Sun, 01 Mar 2026 12:00:00 GMT", LOCAL, LOCAL + _seconds(1))

    assert unknown is None
    assert (_seconds(119), _seconds(121)) == _interval(clock)


@pytest.mark.parametrize(
    "header",
    [None, "", "not a date", "Sun, 99 Foo 2026 25:61:61 GMT", "Sun, 01 Mar 99999999 12:00:00 GMT"],
)
def test_a_malformed_date_header_is_none(header: str | None) -> None:
    """Absent or malformed ``Date`` values are None, never an exception."""
    assert parse_http_date(header) is None


@pytest.mark.parametrize(
    "header", ["Sun, 01 Mar 2026 12:00:00 GMT", "Sun, 01 Mar 2026 12:00:00 -0000"]
)
def test_a_date_header_is_an_aware_utc_time(header: str) -> None:
    """RFC 9110 dates are GMT, also when spelled ``-0000``."""
    assert SENT == parse_http_date(header)
    assert dt.timezone.utc == parse_http_date(header).tzinfo  # type: ignore[union-attr]


def test_a_task_stamped_in_the_milliseconds_the_send_began_may_follow_it() -> None:
    """The wire's times are whole milliseconds: a task made 0.3 ms after a send at .0005 s
    says .000 s, and with the clock known exactly it is still the create's."""
    sent = SENT + dt.timedelta(microseconds=500)
    doubt = _doubt(sent_at=sent, uncertainty=0.0)

    assert Found(_task("t-1", after=0.0)) == _verdict(doubt, [_task("t-1", after=0.0)])
    assert isinstance(_verdict(doubt, [_task("t-1", after=-0.002)]), Ambiguous)


def test_a_task_for_the_video_within_an_hour_before_the_send_blocks_absence() -> None:
    """A send misplaced by a clock step (or a gateway's clock) could hide its task before
    the window: made within an hour before it, a task for the video keeps it ambiguous."""
    earlier = _task("2", after=-600.0)

    verdict = _verdict(_doubt(), [earlier])

    assert isinstance(verdict, Ambiguous)
    assert (earlier,) == verdict.candidates


def test_task_times_outrank_a_gateways_date_headers() -> None:
    """A gateway's Date may run on its own clock: once a task time was seen, the offset is
    the task times', whatever the Date headers say."""
    clock = ServerClock()
    local = SENT - dt.timedelta(minutes=5)
    clock.observe_date("Sun, 01 Mar 2026 12:02:00 GMT", local, local + SECOND / 10)
    clock.observe(SENT, local, local + SECOND / 10)
    clock.observe_date("Sun, 01 Mar 2026 12:02:00 GMT", local, local + SECOND / 10)

    assert clock.offset is not None
    assert abs(clock.offset - dt.timedelta(minutes=5)) < SECOND / 10


# -- where a send stands, and when to look again -------------------------------------------

NOW = SENT + dt.timedelta(seconds=40)  # the server's clock, when the look-up places the send


def test_a_send_of_this_process_is_placed_by_the_loop_clock_from_the_servers_now() -> None:
    """How long ago it left (loop clock) counts back from the server's now: a wall clock
    stepped since cannot move it."""
    doubt = place(
        video_id="vid-1",
        external_task_id=None,
        window=WINDOW,
        clock_uncertainty=SECOND,
        server_now=NOW,
        sent_ago=dt.timedelta(seconds=40),
        sent_wall_on_server=SENT + dt.timedelta(hours=2),  # a stepped wall clock: ignored
    )
    assert (SENT, SECOND) == (doubt.sent_at, doubt.uncertainty)


def test_a_send_of_this_process_without_the_servers_clock_cannot_be_placed() -> None:
    """No server time learned yet: only its external id can settle it."""
    doubt = place(
        video_id="vid-1",
        external_task_id="ext-1",
        window=WINDOW,
        clock_uncertainty=SECOND,
        server_now=None,
        sent_ago=dt.timedelta(seconds=40),
    )
    assert doubt.sent_at is None


def test_a_journaled_send_is_placed_by_its_recorded_server_time_first() -> None:
    """The server time journaled with the send, with its own uncertainty, outranks its
    wall-clock time."""
    recorded = place(
        video_id="vid-1",
        external_task_id=None,
        window=WINDOW,
        clock_uncertainty=SECOND,
        server_now=NOW,
        sent_server=SENT,
        sent_uncertainty=3 * SECOND,
        sent_wall_on_server=SENT + dt.timedelta(minutes=5),
    )
    by_wall = place(
        video_id="vid-1",
        external_task_id=None,
        window=WINDOW,
        clock_uncertainty=SECOND,
        server_now=NOW,
        sent_wall_on_server=SENT + dt.timedelta(minutes=5),
    )
    assert (SENT, 3 * SECOND) == (recorded.sent_at, recorded.uncertainty)
    assert (SENT + dt.timedelta(minutes=5), SECOND) == (by_wall.sent_at, by_wall.uncertainty)


@pytest.mark.parametrize(
    ("sent_at", "expected"),
    [
        (SENT - dt.timedelta(minutes=1), False),  # in the past: the clock is fine
        (SENT + dt.timedelta(seconds=5), False),  # within the step tolerance
        (SENT + dt.timedelta(seconds=6), True),  # in the future: the clock was set back
    ],
)
def test_a_send_recorded_in_the_clocks_future_was_set_back(
    sent_at: dt.datetime, expected: bool
) -> None:
    """A journaled send more than `CLOCK_STEP` seconds ahead of now cannot be placed."""
    assert expected == set_back(sent_at, SENT)


@pytest.mark.parametrize(
    ("sent_server", "server_now", "wall_elapsed", "expected"),
    [
        (SENT, NOW, 40.0, (90.0, True)),  # both on the server's clock
        (SENT, NOW, -3600.0, (90.0, True)),  # a wall clock set back an hour cannot matter
        (None, None, 100.0, (30.0, True)),  # wall clock only: 100 s of 130 gone
        (None, None, 500.0, (0.0, True)),  # the window closed long ago
        (None, None, -3.0, (130.0, True)),  # a little in the future: waited in full
        (None, None, -60.0, (130.0, False)),  # set back: waited in full, cannot be placed
    ],
)
def test_the_time_left_of_a_journaled_send(
    sent_server: dt.datetime | None,
    server_now: dt.datetime | None,
    wall_elapsed: float,
    expected: tuple[float, bool],
) -> None:
    """What is left of a journaled send's window, and whether its wall time places it."""
    wall_now = SENT + dt.timedelta(seconds=wall_elapsed)
    assert expected == time_left(
        130.0, now=wall_now, sent_at=SENT, server_now=server_now, sent_server=sent_server
    )


@pytest.mark.parametrize(
    ("now", "waits", "rival", "resend", "expected"),
    [
        (10.0, True, False, False, False),  # window open, the policy waits: look again
        (20.0, True, False, False, True),  # window closed: answer
        (10.0, False, False, False, True),  # no waiting: answer at once
        (10.0, False, True, False, False),  # ... unless a rival's reply is still to come
        (10.0, False, False, True, False),  # ... or "absent" would send it again
    ],
)
def test_when_a_look_up_must_answer(
    now: float, waits: bool, rival: bool, resend: bool, expected: bool
) -> None:
    """A look-up answers once the windows end, or at once under a policy that does not wait
    when nothing may still change the answer."""
    assert expected == must_answer(
        now=now, ends=20.0, waits=waits, rival_on_wire=rival, may_resend=resend
    )


def test_look_ups_come_every_few_seconds_or_at_the_windows_end() -> None:
    """Every `LOOK_EVERY` seconds while the window is open; no waiting: straight to its end."""
    assert LOOK_EVERY == look_delay(now=0.0, ends=100.0, waits=True)
    assert 1.5 == look_delay(now=98.5, ends=100.0, waits=True)
    assert 100.0 == look_delay(now=0.0, ends=100.0, waits=False)
    assert 0.0 == look_delay(now=120.0, ends=100.0, waits=True)
