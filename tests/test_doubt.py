"""Creates in doubt are never paid twice, nor given to the wrong key, on a skewed, busy account.

A create is in doubt when its request may have left and no reply was read (here: a journal
row left ``sending`` by a process that died). These tests keep the default retry policy's
shape (look-ups every few seconds until the send's window closes) and shorten only the
timeouts that make the window; waits are not what they attack, so polls are instant.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from kling_async import (
    AmbiguousCreateError,
    EntryState,
    ExtendRequest,
    InvalidRequestError,
    KlingSession,
    PollPolicy,
    SQLiteJournal,
)
from kling_async.testing import Fault, KlingEmulator

pytestmark = pytest.mark.anyio

CHILD = pathlib.Path(__file__).with_name("journal_batch_child.py")
SHORT = {"poll_policy": PollPolicy.instant(), "connect_timeout": 0.5, "read_timeout": 0.5}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def gateway(emulator: KlingEmulator, **options: Any) -> KlingSession:
    """A gateway session with the default retry policy and a 1.5 s window."""
    return KlingSession(emulator.api_key, base_url=emulator.gateway_url, **{**SHORT, **options})


def official(emulator: KlingEmulator, **options: Any) -> KlingSession:
    """An access-key session (stamped external ids) with the default retry policy."""
    return KlingSession(
        access_key=emulator.access_key,
        secret_key=emulator.secret_key,
        base_url=emulator.base_url,
        **{**SHORT, **options},
    )


async def left_in_doubt(
    path: pathlib.Path,
    key: str,
    request: ExtendRequest,
    *,
    stamp: str | None = None,
    sent_at: dt.datetime | None = None,
    sent_server: dt.datetime | None = None,
) -> ExtendRequest:
    """Journal ``key`` as a dead process leaves it: sent, never answered, no owner."""
    async with SQLiteJournal(path) as journal:
        claim = await journal.claim(key, request, now=_now(), stamp=stamp)
        await journal.mark_sending(
            key, sent_at or _now(), sent_server=sent_server, sent_uncertainty=0.01
        )
    return claim.request


async def made_by_another_client(emulator: KlingEmulator, video_id: str) -> str:
    """The id of a task another (gateway) client makes for ``video_id`` now."""
    async with gateway(emulator) as other:
        return (await other.extend(video_id)).task_id


async def resumed(emulator: KlingEmulator, journal: pathlib.Path) -> list[str]:
    """The task ids a gateway session's ``resume()`` on ``journal`` returns (bounded)."""
    async with gateway(emulator, journal=journal) as session:
        with anyio.fail_after(30):
            return [handle.task_id for handle in await session.resume()]


async def run_or_kill(
    process: anyio.abc.Process, made: Callable[[], int], stop_at: int | None, *, timeout: float
) -> tuple[int, bool]:
    """Let ``process`` run; SIGKILL it once ``made()`` reaches ``stop_at`` (creates are then
    in flight). Its exit status, and whether it was killed."""
    killed = False
    with anyio.fail_after(timeout):
        while process.returncode is None:
            if stop_at is not None and made() >= stop_at:
                process.send_signal(signal.SIGKILL)
                killed = True
                break
            await anyio.sleep(0.002)
        status = await process.wait()
    await process.aclose()
    return status, killed


async def state_of(path: pathlib.Path, key: str) -> tuple[EntryState, str | None]:
    async with SQLiteJournal(path) as journal:
        entry = await journal.get(key)
    assert entry is not None
    return entry.state, entry.task_id


@pytest.mark.parametrize("skew", [-300.0, -5.0, 300.0])
async def test_a_create_in_doubt_is_found_past_a_busy_first_page_on_a_skewed_server(
    tmp_path: pathlib.Path, skew: float
) -> None:
    """The server's clock is off by ``skew`` s and 250 tasks of another client came after the
    send: the look-up reads pages back to the send on the server's clock and finds the task."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        emulator.clock = lambda: time.time() + skew
        async with gateway(emulator) as other:
            sent_at = _now()
            request = await left_in_doubt(journal, "row-1", ExtendRequest(video_id="vid-1"))
            made_id = (
                await other.extend("vid-1")
            ).task_id  # the dead process's create, as the server saw it
            for n in range(250):
                await other.extend(f"busy-{n}")
        resumed_ids = await resumed(emulator, journal)

        creates = emulator.count("create")
    assert request.video_id == "vid-1"
    assert sent_at <= _now()
    assert [made_id] == resumed_ids
    assert 251 == creates  # nothing sent again
    assert (EntryState.CREATED, made_id) == await state_of(journal, "row-1")


async def test_two_keys_for_one_video_in_doubt_never_share_its_one_task(
    tmp_path: pathlib.Path,
) -> None:
    """Keys A and B (same video, other prompts) were both in flight at a crash; only A's
    create reached the server. Without external ids the task cannot be told apart: both stay
    in doubt, nothing is sent, and settling A lets B be sent once its window has closed."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        await left_in_doubt(journal, "A", ExtendRequest(video_id="vid-1", prompt="pan left"))
        await left_in_doubt(journal, "B", ExtendRequest(video_id="vid-1", prompt="zoom out"))
        async with gateway(emulator) as other:
            made_id = (await other.extend("vid-1", prompt="pan left")).task_id
        async with gateway(emulator, journal=journal) as session:
            with anyio.fail_after(30):
                first = await session.resume()
            unsettled = (await state_of(journal, "A"), await state_of(journal, "B"))
            with pytest.raises(AmbiguousCreateError) as caught:
                await session.extend("vid-1", prompt="zoom out", key="B")
            await session.settle("A", made_id)
            with anyio.fail_after(30):
                second = await session.resume()
        tasks = list(emulator.tasks)

    assert [] == first
    assert ((EntryState.SENDING, None), (EntryState.SENDING, None)) == unsettled
    assert (made_id,) == caught.value.candidate_ids
    assert "B" == caught.value.key
    assert 2 == len(tasks)  # B's create, once A had the listed task
    assert (EntryState.CREATED, made_id) == await state_of(journal, "A")
    assert (EntryState.CREATED, tasks[1]) == await state_of(journal, "B")
    assert {made_id, tasks[1]} == {handle.task_id for handle in second}


async def test_stamped_keys_for_one_video_in_doubt_each_get_their_own(
    tmp_path: pathlib.Path,
) -> None:
    """With stamped external ids, A's task is A's and B (which made nothing) is sent again."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        a = await left_in_doubt(
            journal, "A", ExtendRequest(video_id="vid-1", prompt="pan left"), stamp="stamp-a"
        )
        await left_in_doubt(
            journal, "B", ExtendRequest(video_id="vid-1", prompt="zoom out"), stamp="stamp-b"
        )
        async with official(emulator) as other:
            made_id = (
                await other.extend("vid-1", prompt="pan left", external_task_id="stamp-a")
            ).task_id
            await other.extend("vid-1", prompt="someone else's")  # the same video, another stamp
        async with official(emulator, journal=journal) as session:
            with anyio.fail_after(30):
                handles = await session.resume()
        tasks = list(emulator.tasks)

    assert "stamp-a" == a.external_task_id
    assert 3 == len(tasks)
    assert (EntryState.CREATED, made_id) == await state_of(journal, "A")
    assert (EntryState.CREATED, tasks[2]) == await state_of(journal, "B")
    assert {made_id, tasks[2]} == {handle.task_id for handle in handles}


async def test_a_create_in_doubt_is_looked_up_at_once_and_said_so(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With default timeouts (a 130 s window), a journaled create whose task exists is found
    by the first look-up, and the log says a create is in doubt."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        await left_in_doubt(journal, "row-1", ExtendRequest(video_id="vid-1"))
        made_id = await made_by_another_client(emulator, "vid-1")
        caplog.set_level(logging.INFO, logger="kling_async")
        async with KlingSession(
            emulator.api_key, base_url=emulator.gateway_url, journal=journal
        ) as session:
            with anyio.fail_after(20):  # the window is 130 s: this is not waiting it out
                handles = await session.resume()
        lists = emulator.count("list")

    assert [made_id] == [handle.task_id for handle in handles]
    assert 1 == lists
    assert any("1 create(s) in doubt: looking them up" in r.getMessage() for r in caplog.records)


async def test_without_a_list_or_an_external_id_a_create_in_doubt_is_ambiguous_at_once(
    tmp_path: pathlib.Path,
) -> None:
    """A gateway with neither: nothing can settle it, so it says so at once (no 130 s wait),
    keeps the key in doubt, and sends nothing."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator(list_mode="404") as emulator:
        await left_in_doubt(journal, "row-1", ExtendRequest(video_id="vid-1"))
        async with KlingSession(
            emulator.api_key, base_url=emulator.gateway_url, journal=journal
        ) as session:
            with anyio.fail_after(20), pytest.raises(AmbiguousCreateError, match="no task list"):
                await session.extend("vid-1", key="row-1")
        creates = emulator.count("create")

    assert 0 == creates
    assert (EntryState.SENDING, None) == await state_of(journal, "row-1")


async def test_a_clock_set_back_an_hour_neither_sleeps_nor_guesses(
    tmp_path: pathlib.Path,
) -> None:
    """The journaled send is an hour in the local clock's future (the clock was set back):
    the look-up starts at once, the stamped create is found by its id, and the unstamped one,
    whose send cannot be placed, stays in doubt instead of being taken or sent again."""
    journal = tmp_path / "j.sqlite3"
    future = _now() + dt.timedelta(hours=1)
    async with KlingEmulator() as emulator:
        await left_in_doubt(
            journal, "stamped", ExtendRequest(video_id="vid-1"), stamp="s-1", sent_at=future
        )
        await left_in_doubt(journal, "bare", ExtendRequest(video_id="vid-2"), sent_at=future)
        async with official(emulator) as other, gateway(emulator) as unstamped:
            stamped = await other.extend("vid-1", external_task_id="s-1")
            await unstamped.extend("vid-2")  # perhaps the bare one's: nothing can tell
        async with official(emulator, journal=journal, stamp_external_id=False) as session:
            with anyio.fail_after(30):
                handles = await session.resume()
        creates = emulator.count("create")

    assert [stamped.task_id] == [handle.task_id for handle in handles]
    assert 2 == creates
    assert (EntryState.SENDING, None) == await state_of(journal, "bare")


@pytest.mark.crash
@pytest.mark.parametrize("mode", ["official", "gateway"])
async def test_a_batch_killed_at_random_points_on_a_skewed_busy_account_pays_once_per_row(
    tmp_path: pathlib.Path, mode: str
) -> None:
    """SIGKILL at random points, default retry policy, the server's clock minutes off and
    another client creating tasks on the account (the same videos when ids are stamped):
    every row ends with exactly one task, and every run after the last kill finishes."""
    rows = 120
    journal = tmp_path / "batch.sqlite3"
    rng = random.Random(20261207)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    theirs: set[str] = set()
    async with KlingEmulator() as emulator:
        emulator.clock = lambda: time.time() + (-300 if mode == "official" else 420)
        argv = [sys.executable, str(CHILD), emulator.base_url, str(journal), str(rows), mode]
        other = official(emulator) if mode == "official" else gateway(emulator)

        async def busy(count: int) -> None:
            for _ in range(count):
                n = rng.randrange(rows)
                video = f"vid-{n}" if mode == "official" else f"other-{n}"
                theirs.add((await other.extend(video)).task_id)

        def made() -> int:
            return emulator.count("create") - len(theirs)

        kills = 0
        finished = False
        async with other:
            for run in range(12):
                await busy(120)  # more than one list page since the last run's sends
                # Killed once the server made a few more of its tasks: creates are in flight.
                stop_at = made() + rng.randint(5, rows // 2) if run < 5 else None
                out = tmp_path / f"run-{run}.out"
                with out.open("wb") as stdout:
                    process = await anyio.open_process(
                        argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL
                    )
                async with anyio.create_task_group() as group:
                    group.start_soon(busy, 40)  # and some while it runs
                    _, killed = await run_or_kill(process, made, stop_at, timeout=60)
                    kills += killed
                if out.read_bytes().endswith(b"done\n"):
                    finished = True
                    break
        ours = [task for task in emulator.tasks.values() if task.task_id not in theirs]

    assert finished
    assert kills >= 3
    assert rows == len(ours) == len({task.video_id for task in ours})  # no row paid twice
    assert {f"vid-{n}" for n in range(rows)} == {task.video_id for task in ours}


@pytest.mark.crash
async def test_the_batch_command_killed_at_random_points_on_a_skewed_busy_account_pays_once(
    tmp_path: pathlib.Path,
) -> None:
    """`kling-async batch` through a gateway (no external ids: look-ups read the list),
    SIGKILLed mid-create 4 times, the default retry policy, the server's clock 7 minutes
    ahead and another client creating tasks all along: one task per row, and the last run
    exits 0 having waited for every row."""
    rows = 60
    file = tmp_path / "rows.jsonl"
    file.write_text(
        "".join(f'{{"key": "r-{n}", "video_id": "vid-{n}"}}\n' for n in range(rows)),
        encoding="utf-8",
    )
    rng = random.Random(7)
    theirs: set[str] = set()
    async with KlingEmulator() as emulator, gateway(emulator) as other:
        emulator.clock = lambda: time.time() + 420
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "KLING_API_KEY": emulator.api_key,
            "KLING_BASE_URL": emulator.gateway_url,
            "KLING_ASYNC_TEST_POLL_SECONDS": "0.05",  # waits are not what this attacks
            "KLING_ASYNC_TEST_DEFAULT_RETRY": "1",  # look-ups wait between tries
        }
        argv = [
            sys.executable,
            "-m",
            "kling_async",
            "batch",
            str(file),
            "-q",
            "--connect-timeout",
            "0.5",
            "--read-timeout",
            "0.5",
        ]

        async def busy(count: int) -> None:
            for _ in range(count):
                theirs.add((await other.extend(f"other-{rng.randrange(1000)}")).task_id)

        def ours() -> int:
            return emulator.count("create") - len(theirs)

        kills, status = 0, None
        for run in range(8):
            await busy(120)  # more than a list page since the last run's sends
            log = tmp_path / f"run-{run}.err"
            with log.open("wb") as stderr:
                process = await anyio.open_process(
                    argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr
                )
            stop_at = ours() + rng.randint(1, 12) if run < 4 else None
            async with anyio.create_task_group() as group:
                group.start_soon(busy, 30)  # and some while it runs
                status, killed = await run_or_kill(process, ours, stop_at, timeout=120)
                kills += killed
            err = log.read_text("utf-8", errors="replace")
            if status == 0:
                break
        mine = [task for task in emulator.tasks.values() if task.task_id not in theirs]

    assert 0 == status, err
    assert kills == 4
    assert rows == len(mine) == len({task.video_id for task in mine})  # no row paid twice
    results = [
        json.loads(line)
        for line in (tmp_path / "rows.jsonl.results.jsonl").read_text("utf-8").splitlines()
    ]
    assert {"succeed"} == {line["status"] for line in results}


async def test_a_clock_stepped_forward_since_the_send_is_not_taken_for_absence(
    tmp_path: pathlib.Path,
) -> None:
    """The journaled send looks 10 minutes old (the machine's clock was stepped forward
    since), and the task it made is listed as made just now, after its window: that is not
    proof it made nothing, so nothing is sent again and the key stays in doubt."""
    journal = tmp_path / "j.sqlite3"
    ten_minutes_ago = _now() - dt.timedelta(minutes=10)
    async with KlingEmulator() as emulator:
        await left_in_doubt(
            journal, "row-1", ExtendRequest(video_id="vid-1"), sent_at=ten_minutes_ago
        )
        async with gateway(emulator) as other:
            made_id = (await other.extend("vid-1")).task_id  # what the send really made, just now
        async with gateway(emulator, journal=journal) as session:
            with anyio.fail_after(30), pytest.raises(AmbiguousCreateError) as caught:
                await session.extend("vid-1", key="row-1")
        creates = emulator.count("create")

    assert 1 == creates
    assert (made_id,) == caught.value.candidate_ids
    assert (EntryState.SENDING, None) == await state_of(journal, "row-1")


async def test_a_send_journaled_on_the_servers_clock_is_placed_whatever_this_clock_did(
    tmp_path: pathlib.Path,
) -> None:
    """The dead process knew the server's clock (7 minutes ahead) and journaled its send on
    it; this machine's clock was stepped 10 minutes forward since: the send is placed by the
    journaled server time, and its task is found."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        emulator.clock = lambda: time.time() + 420
        sent_server = _now() + dt.timedelta(seconds=420)
        await left_in_doubt(
            journal,
            "row-1",
            ExtendRequest(video_id="vid-1"),
            sent_at=_now() - dt.timedelta(minutes=10),
            sent_server=sent_server,
        )
        made_id = await made_by_another_client(emulator, "vid-1")
        resumed_ids = await resumed(emulator, journal)
        creates = emulator.count("create")

    assert [made_id] == resumed_ids
    assert 1 == creates


async def test_a_keyed_create_journals_its_send_on_the_servers_clock_once_known(
    tmp_path: pathlib.Path,
) -> None:
    """The first create teaches the session the server's clock (5 minutes behind); the next
    keyed create's send is journaled on it, to within a fraction of a second."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        emulator.clock = lambda: time.time() - 300
        async with gateway(emulator, journal=journal) as session:
            first = await session.extend("vid-0", key="row-0")
            await session.extend("vid-1", key="row-1")
        async with SQLiteJournal(journal) as reread:
            unknown, known = await reread.get("row-0"), await reread.get("row-1")

    assert first.task_id
    assert unknown is not None
    assert known is not None
    assert (None, None) == (unknown.sent_server, unknown.sent_uncertainty)
    assert known.sent_at is not None
    assert known.sent_server is not None
    assert known.sent_uncertainty is not None
    assert known.sent_uncertainty < 0.5
    offset = (known.sent_server - known.sent_at).total_seconds()
    assert abs(offset + 300) < 1


async def test_a_look_up_cut_short_is_no_rival_of_the_same_keys_next_try(
    tmp_path: pathlib.Path,
) -> None:
    """extend(key=...) is cancelled during its look-up (a slow list page), then tried again
    in the same session: the earlier try is the same key, not a rival, so its task is found."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        await left_in_doubt(journal, "row-1", ExtendRequest(video_id="vid-1"))
        made_id = await made_by_another_client(emulator, "vid-1")
        async with gateway(emulator, journal=journal) as session:
            emulator.inject(Fault.delay(0.5), route="list", times=1)
            with anyio.move_on_after(0.2):
                await session.extend("vid-1", key="row-1")
            with anyio.fail_after(30):
                again = await session.extend("vid-1", key="row-1")
        creates = emulator.count("create")

    assert made_id == again.task_id
    assert 1 == creates


async def test_one_html_page_from_the_list_does_not_end_look_ups_for_the_session(
    tmp_path: pathlib.Path,
) -> None:
    """A proxy answers one list read with an HTML page (status 200): the look-up tries
    again and finds the task; only a second such page, or a 404, means there is no list."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        await left_in_doubt(journal, "row-1", ExtendRequest(video_id="vid-1"))
        made_id = await made_by_another_client(emulator, "vid-1")
        async with gateway(emulator, journal=journal) as session:
            emulator.inject(Fault.html(200), route="list", times=1)
            with anyio.fail_after(30):
                handles = await session.resume()
        creates = emulator.count("create")

    assert [made_id] == [handle.task_id for handle in handles]
    assert 1 == creates


async def test_a_clock_stepped_back_unseen_since_the_send_never_proves_absence(
    tmp_path: pathlib.Path,
) -> None:
    """The dead process's clock ran a minute fast, then was stepped back: its journaled send
    reads 10 s ago though its task was made 70 s ago. Not in the window as placed, the task
    is still near it: the key stays in doubt and nothing is sent again."""
    journal = tmp_path / "j.sqlite3"
    async with KlingEmulator() as emulator:
        emulator.clock = lambda: time.time() - 70  # the task, as the server made it then
        made_id = await made_by_another_client(emulator, "vid-1")
        emulator.clock = time.time
        await left_in_doubt(
            journal,
            "row-1",
            ExtendRequest(video_id="vid-1"),
            sent_at=_now() - dt.timedelta(seconds=10),
        )
        async with gateway(emulator, journal=journal) as session:
            with anyio.fail_after(30), pytest.raises(AmbiguousCreateError) as caught:
                await session.extend("vid-1", key="row-1")
        creates = emulator.count("create")

    assert 1 == creates
    assert (made_id,) == caught.value.candidate_ids


# -- a refusal that says the create's external id is taken ----------------------------------


async def test_a_stamped_create_refused_for_its_taken_stamp_gets_the_task_carrying_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only an earlier send of this create can carry its stamp (a random id), so a 1201 on
    it is looked up by the stamp: the task found is this create's, not a refusal."""
    monkeypatch.setattr("kling_async._submit.new_stamp", lambda: "kling-async-0123")
    async with KlingEmulator() as emulator:
        async with official(emulator, stamp_external_id=False) as earlier:
            made = await earlier.extend("vid-1", external_task_id="kling-async-0123")
        async with official(emulator) as session:
            handle = await session.extend("vid-1")
        routes = [(r.route, r.status) for r in emulator.requests]

    assert made.task_id == handle.task_id
    assert [("create", 200), ("create", 400), ("query", 200)] == routes


async def test_a_stamped_create_refused_with_1201_for_another_reason_stays_refused() -> None:
    """A 1201 whose stamp no task carries is the refusal it says (one query to tell)."""
    async with KlingEmulator() as emulator:
        emulator.inject(Fault.business(1201, status=400), route="create")
        async with official(emulator) as session:
            with pytest.raises(InvalidRequestError) as refused:
                await session.extend("vid-1")
        routes = [(r.route, r.status) for r in emulator.requests]

    assert 1201 == refused.value.code
    assert [("create", 400), ("query", 404)] == routes
    assert not emulator.tasks


async def test_a_caller_s_own_external_id_taken_is_a_refusal_not_someone_else_s_task() -> None:
    """The caller's own external id may be in use by any task of the account: never looked
    up as this create's."""
    async with KlingEmulator() as emulator:
        async with official(emulator) as session:
            await session.extend("vid-1", external_task_id="mine")
            with pytest.raises(InvalidRequestError, match="already exists"):
                await session.extend("vid-2", external_task_id="mine")
        routes = [(r.route, r.status) for r in emulator.requests]

    assert [("create", 200), ("create", 400)] == routes
