"""Keyed creates through a journal: at most one paid task per key, across crashes."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import random
import signal
import subprocess
import sys

import anyio
import pytest

from kling_async import ContentPolicyError, EntryState, ExtendRequest
from kling_async._sqlite_journal import SQLiteJournal
from kling_async._task_codec import read_task
from kling_async.testing import Fault, KlingEmulator

from .helpers import official

pytestmark = pytest.mark.anyio

CHILD = pathlib.Path(__file__).with_name("journal_batch_child.py")


async def test_a_key_without_a_journal_is_refused_before_sending(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """``key`` needs ``journal``; a key that is not a str is a TypeError."""
    async with official(emu) as session:
        with pytest.raises(ValueError, match="journal"):
            await session.extend("vid-1", key="row-1")
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        with pytest.raises(TypeError, match="key"):
            await session.extend("vid-1", key=1)  # type: ignore[arg-type]  # wrong on purpose
    assert 0 == emu.count("create")


async def test_a_key_makes_one_task_in_this_process_and_the_next(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The same key returns the recorded task and sends nothing, also from a new session."""
    journal = tmp_path / "batch.sqlite3"
    async with official(emu, journal=journal) as session:
        first = await session.extend("vid-1", key="row-1")
        again = await session.extend("vid-1", key="row-1")
    async with official(emu, journal=journal) as later:
        third = await later.extend("vid-1", key="row-1")

    assert first.task_id == again.task_id == third.task_id
    assert 1 == emu.count("create")


async def test_a_key_reused_for_another_request_is_a_value_error(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Reusing a key for a different request raises ValueError before anything is sent."""
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        await session.extend("vid-1", key="row-1")
        with pytest.raises(ValueError, match=r"row-1"):
            await session.extend("vid-1", prompt="something else", key="row-1")
    assert 1 == emu.count("create")


async def test_a_refused_request_is_remembered_and_not_sent_again(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Content policy refused it: the key raises the same refusal without a second create."""
    emu.inject(Fault.business(1301, status=400), route="create")
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        with pytest.raises(ContentPolicyError):
            await session.extend("vid-1", key="row-1")
        with pytest.raises(ContentPolicyError) as again:
            await session.extend("vid-1", key="row-1")
    assert 1 == emu.count("create")
    assert 1301 == again.value.code


async def test_a_create_the_last_process_died_in_is_found_not_resent(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A record left 'sending' whose task exists is settled by its external id: no create."""
    path = tmp_path / "j.sqlite3"
    request = ExtendRequest(video_id="vid-1")
    async with SQLiteJournal(path) as crashed:  # stands for the process that died
        claim = await crashed.claim("row-1", request, now=_now(), stamp="ext-row-1")
        await crashed.mark_sending("row-1", _now())
    async with official(emu) as other:  # its create did reach the server
        made = await other.extend("vid-1", external_task_id="ext-row-1")
    assert claim.request.external_task_id == "ext-row-1"
    creates = emu.count("create")

    async with official(emu, journal=path) as session:
        handle = await session.extend("vid-1", key="row-1")

    assert made.task_id == handle.task_id
    assert creates == emu.count("create")


async def test_a_create_that_never_left_is_sent_once_the_record_proves_it(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """'sending' (long ago) but unknown to the server by external id and list: it is sent,
    once."""
    path = tmp_path / "j.sqlite3"
    long_ago = _now() - dt.timedelta(seconds=200)  # past its window (130 s by default)
    async with SQLiteJournal(path) as crashed:
        await crashed.claim("row-1", ExtendRequest(video_id="vid-1"), now=long_ago, stamp="ext-1")
        await crashed.mark_sending("row-1", long_ago)

    async with official(emu, journal=path) as session:
        handle = await session.extend("vid-1", key="row-1")
        again = await session.extend("vid-1", key="row-1")

    assert handle.task_id == again.task_id
    assert 1 == emu.count("create")
    assert "ext-1" == emu.tasks[handle.task_id].external_task_id


async def test_a_resend_refused_because_its_external_id_is_taken_gets_that_task(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The look-up missed the first send's task (its query answered 404 once, the list page
    came back empty), so the create is sent again with the same
    external id; Kling's 1201 for the taken id makes it look that id up: the key gets the
    task its first send made, never a refusal (which would forget a paid task)."""
    path = tmp_path / "j.sqlite3"
    long_ago = _now() - dt.timedelta(seconds=200)  # past its window (130 s by default)
    async with SQLiteJournal(path) as crashed:
        await crashed.claim("row-1", ExtendRequest(video_id="vid-1"), now=long_ago, stamp="ext-1")
        await crashed.mark_sending("row-1", long_ago)
    async with official(emu) as first_send:
        made = await first_send.extend("vid-1", external_task_id="ext-1")
    emu.inject(Fault.business(1203, status=404), route="query")
    emu.inject(Fault.raw(200, b'{"code": 0, "message": "SUCCEED", "data": []}'), route="list")
    creates = emu.count("create")

    async with official(emu, journal=path) as session:
        handle = await session.extend("vid-1", key="row-1")
    async with SQLiteJournal(path) as reread:
        entry = await reread.get("row-1")

    assert made.task_id == handle.task_id
    assert [200, 400] == [r.status for r in emu.requests if r.route == "create"]
    assert creates + 1 == emu.count("create")  # the resend, refused: the id is taken
    assert entry is not None
    assert (EntryState.CREATED, made.task_id) == (entry.state, entry.task_id)


async def test_a_policy_that_does_not_wait_still_resends_only_after_the_window(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """With RetryPolicy.instant(), a journaled create sent just now and not found is looked
    up again once its window (0.6 s here) has closed, and only then sent."""
    path = tmp_path / "j.sqlite3"
    async with SQLiteJournal(path) as crashed:
        await crashed.claim("row-1", ExtendRequest(video_id="vid-1"), now=_now(), stamp="ext-1")
        await crashed.mark_sending("row-1", _now())

    async with official(emu, journal=path, connect_timeout=0.2, read_timeout=0.2) as session:
        await session.extend("vid-1", key="row-1")

    assert 1 == emu.count("create")
    assert 2 == emu.count("query")  # the id looked up at once, then after the window


async def test_resume_returns_the_unfinished_tasks_and_records_their_end(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """resume() gives handles for what is not seen finished; a wait records the end."""
    path = tmp_path / "j.sqlite3"
    async with official(emu, journal=path) as session:
        for n in range(3):
            await session.extend(f"vid-{n}", key=f"row-{n}")
    async with official(emu, journal=path) as session:
        handles = await session.resume()
        assert 3 == len(handles)
        await handles[0].wait()
    async with official(emu, journal=path) as session:
        remaining = await session.resume()
    assert {h.task_id for h in handles[1:]} == {h.task_id for h in remaining}
    with pytest.raises(ValueError, match="journal"):
        async with official(emu) as plain:
            await plain.resume()


@pytest.mark.crash
async def test_a_batch_killed_at_random_points_pays_once_for_every_row(
    tmp_path: pathlib.Path,
) -> None:
    """SIGKILL during creates and waits, then re-runs: 300 rows, exactly 300 tasks, all done."""
    rows = 300
    journal = tmp_path / "batch.sqlite3"
    rng = random.Random(20261202)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    async with KlingEmulator() as emulator:
        argv = [sys.executable, str(CHILD), emulator.base_url, str(journal), str(rows)]
        kills = 0
        for run in range(12):
            kill_after = rng.randint(20, 320) if run < 5 else None  # lines before the kill
            process = await anyio.open_process(argv, env=env, stderr=subprocess.PIPE)
            assert process.stdout is not None
            lines = 0
            finished = False
            async for chunk in process.stdout:
                lines += chunk.count(b"\n")
                if b"done" in chunk:
                    finished = True
                if kill_after is not None and lines >= kill_after:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                    break
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
            if process.stderr is not None:
                await process.stderr.aclose()
            if finished:
                break
        tasks = list(emulator.tasks.values())

    assert finished
    assert kills >= 3
    assert rows == len(tasks) == len({t.video_id for t in tasks})  # no row paid twice
    assert all(t.status == "succeed" for t in tasks)  # every task waited to the end


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def test_two_processes_sharing_a_journal_never_both_create_a_key(
    tmp_path: pathlib.Path,
) -> None:
    """Two copies of the batch run at once on one journal: each row is paid for once."""
    rows = 100
    journal = tmp_path / "batch.sqlite3"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    async with KlingEmulator() as emulator:
        argv = [sys.executable, str(CHILD), emulator.base_url, str(journal), str(rows)]
        outputs: list[bytes] = []

        async def run() -> None:
            result = await anyio.run_process(argv, env=env, check=True)
            outputs.append(result.stdout)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(run)
                group.start_soon(run)
        tasks = list(emulator.tasks.values())

    assert [True, True] == [out.rstrip().endswith(b"done") for out in outputs]
    assert rows == len(tasks) == len({t.video_id for t in tasks})


async def test_a_finished_task_is_journaled_with_its_json_and_cost(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A wait that sees a keyed task finish records its task JSON, which the SDK's converter
    reads back as the task with its cost (what `kling-async mcp` counts after a restart)."""
    path = tmp_path / "j.sqlite3"
    async with official(emu, journal=path) as session:
        handle = await session.extend("vid-1", key="row-1")
        finished = await handle.wait()
    async with SQLiteJournal(path) as journal:
        entry = await journal.get("row-1")
    assert entry is not None
    assert EntryState.FINISHED == entry.state
    assert finished.cost is not None
    assert finished == read_task(entry.task)
    assert finished.cost == read_task(entry.task).cost
