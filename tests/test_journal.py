"""The create journal: each transition, reuse of keys, processes racing and dying."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from kling_async._journal import ClaimOutcome, EntryState, Journal, JournalError
from kling_async._journal_schema import SCHEMA_VERSION
from kling_async._sqlite_journal import SQLiteJournal
from kling_async.models import ExtendRequest, TaskStatus

from .journal_child import request_for

pytestmark = pytest.mark.anyio

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
SENT = NOW + dt.timedelta(seconds=1)
REQUEST = ExtendRequest(video_id="video-1", prompt="a cat")
CHILD = pathlib.Path(__file__).with_name("journal_child.py")
ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "journal.db"


@pytest.fixture
async def journal(db: pathlib.Path) -> AsyncIterator[SQLiteJournal]:
    async with SQLiteJournal(db) as opened:
        yield opened


@pytest.fixture
async def other(db: pathlib.Path) -> AsyncIterator[SQLiteJournal]:
    """A second instance on the same file: another process, as far as ownership goes."""
    async with SQLiteJournal(db) as opened:
        yield opened


async def created(journal: SQLiteJournal, key: str, task_id: str) -> None:
    claim = await journal.claim(key, REQUEST, now=NOW, stamp=f"stamp-{key}")
    assert ClaimOutcome.FRESH == claim.outcome
    await journal.mark_sending(key, SENT)
    await journal.mark_created(key, task_id, {"task_id": task_id, "task_status": "submitted"})


# -- claim and the transitions -------------------------------------------------------------


async def test_a_new_key_is_fresh_and_records_the_stamped_request(
    journal: SQLiteJournal,
) -> None:
    """A first claim records the intent, with the session's stamp, owned by this instance."""
    claim = await journal.claim("k", REQUEST, now=NOW, stamp="kling-async-1")

    assert ClaimOutcome.FRESH == claim.outcome
    assert "kling-async-1" == claim.request.external_task_id
    assert REQUEST.prompt == claim.request.prompt
    entry = await journal.get("k")
    assert entry == claim.entry
    assert EntryState.INTENT == entry.state
    assert entry.stamped
    assert NOW == entry.claimed_at
    assert journal.token == entry.owner
    assert None is entry.sent_at


async def test_sending_then_created_is_existing_for_every_later_claim(
    journal: SQLiteJournal,
) -> None:
    """Once the task id is recorded, a claim returns it and takes nothing."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s1")
    await journal.mark_sending("k", SENT)
    assert EntryState.SENDING == (await journal.get("k")).state  # type: ignore[union-attr]
    await journal.mark_created("k", "task-1", {"task_id": "task-1"})

    claim = await journal.claim("k", REQUEST, now=NOW, stamp="s2")

    assert ClaimOutcome.EXISTING == claim.outcome
    assert "task-1" == claim.task_id
    assert {"task_id": "task-1"} == claim.entry.task
    assert SENT == claim.entry.sent_at
    assert "s1" == claim.request.external_task_id  # the id it was sent with, not s2
    assert None is claim.entry.owner


async def test_a_finished_task_is_recorded_and_leaves_pending(journal: SQLiteJournal) -> None:
    """mark_finished (by task id) records the final status; pending() no longer lists it."""
    await created(journal, "k", "task-1")
    assert ["k"] == [entry.key for entry in await journal.pending()]

    assert await journal.mark_finished("task-1", TaskStatus.SUCCEED, {"task_status": "succeed"})
    assert not await journal.mark_finished("task-unknown", "failed")

    entry = await journal.get("k")
    assert entry is not None
    assert EntryState.FINISHED == entry.state
    assert TaskStatus.SUCCEED == entry.status
    assert {"task_status": "succeed"} == entry.task
    assert [] == await journal.pending()
    claim = await journal.claim("k", REQUEST, now=NOW)
    assert (ClaimOutcome.EXISTING, "task-1") == (claim.outcome, claim.task_id)


async def test_a_key_reused_for_another_request_is_a_value_error(
    journal: SQLiteJournal,
) -> None:
    """The key names one request: another prompt under it raises ValueError, in any state."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    with pytest.raises(ValueError, match="another request"):
        await journal.claim("k", ExtendRequest(video_id="video-1", prompt="a dog"), now=NOW)
    await journal.mark_sending("k", SENT)
    await journal.mark_created("k", "task-1")
    with pytest.raises(ValueError, match="another request"):
        await journal.claim("k", ExtendRequest(video_id="video-2", prompt="a cat"), now=NOW)
    with pytest.raises(ValueError, match="another request"):  # a caller's own external id
        await journal.claim(
            "k", ExtendRequest(video_id="video-1", prompt="a cat", external_task_id="mine"), now=NOW
        )


async def test_the_same_request_spelled_differently_is_the_same(journal: SQLiteJournal) -> None:
    """cfg_scale 1 and 1.0 are one request; the stamp is not part of a request's identity."""
    first = ExtendRequest(video_id="v", cfg_scale=1)
    await created(journal, "k", "t")
    await journal.claim("k2", first, now=NOW, stamp="a")

    claim = await journal.claim("k2", ExtendRequest(video_id="v", cfg_scale=1.0), now=NOW)

    assert ClaimOutcome.BUSY == claim.outcome  # same request, still being created here


async def test_a_claim_with_the_recorded_request_matches(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """resume() may claim with entry.request, which carries the stamp, and still match."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    await journal.mark_sending("k", SENT)
    await journal.release("k")
    (entry,) = await journal.pending()

    claim = await other.claim("k", entry.request, now=NOW)

    assert ClaimOutcome.IN_DOUBT == claim.outcome
    assert claim.entry.stamped
    await other.mark_not_sent("k")
    await other.release("k")
    # the stamp is still not part of the identity: a later run with a new stamp matches
    again = await journal.claim("k", REQUEST, now=NOW, stamp="s-new")
    assert ClaimOutcome.FRESH == again.outcome
    assert "s-new" == again.request.external_task_id


async def test_not_sent_goes_back_to_intent_and_stays_owned(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """A create that certainly did not leave returns to INTENT, still this instance's."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    await journal.mark_sending("k", SENT)
    await journal.mark_not_sent("k")

    entry = await journal.get("k")
    assert entry is not None
    assert (EntryState.INTENT, journal.token) == (entry.state, entry.owner)
    assert ClaimOutcome.BUSY == (await other.claim("k", REQUEST, now=NOW)).outcome
    await journal.mark_sending("k", SENT)  # the retry loop may send again


async def test_a_released_intent_is_taken_over_with_the_new_stamp(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """An INTENT nobody owns proves nothing left: the next claim is FRESH, with its stamp."""
    await journal.claim("k", REQUEST, now=NOW, stamp="old")
    await journal.release("k")
    later = NOW + dt.timedelta(hours=1)

    claim = await other.claim("k", REQUEST, now=later, stamp="new")

    assert ClaimOutcome.FRESH == claim.outcome
    assert ("new", other.token, later) == (
        claim.request.external_task_id,
        claim.entry.owner,
        claim.entry.claimed_at,
    )
    # and without a stamp (stamping turned off), nothing stale is sent
    await other.release("k")
    unstamped = await journal.claim("k", REQUEST, now=later)
    assert None is unstamped.request.external_task_id
    assert not unstamped.entry.stamped


async def test_a_sending_key_nobody_owns_is_in_doubt(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """A create sent and never answered is IN_DOUBT: the claimant owns it to reconcile."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    await journal.mark_sending("k", SENT)
    await journal.release("k")

    claim = await other.claim("k", REQUEST, now=NOW, stamp="ignored")

    assert ClaimOutcome.IN_DOUBT == claim.outcome
    assert ("s", SENT, other.token) == (
        claim.request.external_task_id,
        claim.entry.sent_at,
        claim.entry.owner,
    )
    assert ClaimOutcome.BUSY == (await journal.claim("k", REQUEST, now=NOW)).outcome
    await other.mark_created("k", "found-by-reconcile")
    assert "found-by-reconcile" == (await journal.claim("k", REQUEST, now=NOW)).task_id


async def test_a_refused_create_is_refused_on_reuse_until_forgotten(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """A request the server refused is not resent by a re-run; forget() frees the key."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    await journal.mark_sending("k", SENT)
    await journal.mark_refused("k", "content risk control", code=1301)

    claim = await other.claim("k", REQUEST, now=NOW)

    assert ClaimOutcome.REFUSED == claim.outcome
    assert (1301, "content risk control") == (
        claim.entry.refusal_code,
        claim.entry.refusal_reason,
    )
    assert await other.forget("k")
    assert not await other.forget("k")
    assert None is await other.get("k")
    fixed = ExtendRequest(video_id="video-1", prompt="a calm cat")
    assert ClaimOutcome.FRESH == (await journal.claim("k", fixed, now=NOW)).outcome


async def test_a_key_a_live_instance_owns_cannot_be_forgotten(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """forget() refuses while a create of the key is in progress."""
    await journal.claim("k", REQUEST, now=NOW)
    with pytest.raises(ValueError, match="live"):
        await other.forget("k")


async def test_writes_need_ownership_and_the_right_state(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """A transition on a key this instance does not own, or out of order, is a RuntimeError."""
    with pytest.raises(RuntimeError, match="never claimed"):
        await journal.mark_sending("nope", SENT)
    await journal.claim("k", REQUEST, now=NOW)
    with pytest.raises(RuntimeError, match="does not own"):
        await other.mark_sending("k", SENT)
    with pytest.raises(RuntimeError, match="is intent, not sending"):
        await journal.mark_created("k", "task-1")
    with pytest.raises(RuntimeError, match="is intent, not sending"):
        await journal.mark_refused("k", "why")
    await other.release("k")  # not its key: nothing happens
    assert journal.token == (await journal.get("k")).owner  # type: ignore[union-attr]


async def test_one_task_id_is_never_recorded_for_two_keys(journal: SQLiteJournal) -> None:
    """A reconciliation that picks another key's task is refused with ValueError."""
    await created(journal, "a", "task-1")
    await journal.claim("b", REQUEST, now=NOW)
    await journal.mark_sending("b", SENT)

    with pytest.raises(ValueError, match="already journaled for key 'a'"):
        await journal.mark_created("b", "task-1")

    assert EntryState.SENDING == (await journal.get("b")).state  # type: ignore[union-attr]


async def test_pending_lists_unfinished_tasks_and_creates_in_doubt(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """pending(): CREATED and unowned SENDING entries; not a create in progress, not INTENT."""
    await created(journal, "done", "task-done")
    await journal.mark_finished("task-done", "succeed")
    await created(journal, "running", "task-running")
    for key in ("doubt", "in-progress", "intent"):
        await journal.claim(key, REQUEST, now=NOW)
    await journal.mark_sending("doubt", SENT)
    await journal.release("doubt")
    await journal.mark_sending("in-progress", SENT)

    pending = {entry.key: entry.state for entry in await other.pending()}

    assert {"running": EntryState.CREATED, "doubt": EntryState.SENDING} == pending


async def test_reopening_the_file_finds_the_records(db: pathlib.Path) -> None:
    """A new instance (a new process) on the same file sees what an earlier one wrote."""
    async with SQLiteJournal(db) as first:
        await created(first, "a", "task-a")
        await first.claim("b", REQUEST, now=NOW, stamp="sb")
        await first.mark_sending("b", SENT)
        await first.claim("c", REQUEST, now=NOW)
        # closed with b and c still owned: closing lets them go

    async with SQLiteJournal(db) as second:
        assert "task-a" == (await second.claim("a", REQUEST, now=NOW)).task_id
        doubt = await second.claim("b", REQUEST, now=NOW)
        assert (ClaimOutcome.IN_DOUBT, "sb") == (doubt.outcome, doubt.request.external_task_id)
        assert ClaimOutcome.FRESH == (await second.claim("c", REQUEST, now=NOW)).outcome


async def test_synchronous_full_works_the_same(tmp_path: pathlib.Path) -> None:
    """The power-loss-safe setting changes durability only."""
    async with SQLiteJournal(tmp_path / "full.db", synchronous="FULL") as journal:
        await created(journal, "k", "task-1")
        assert "task-1" == (await journal.claim("k", REQUEST, now=NOW)).task_id


# -- waiting for another create ----------------------------------------------------------


async def test_a_busy_claim_waits_for_the_owner_to_finish(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """claim(wait=) returns the task once the owner in progress records it."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    result: list[Any] = []

    async def waiter() -> None:
        result.append(await other.claim("k", REQUEST, now=NOW, wait=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        assert [] == result
        await journal.mark_sending("k", SENT)
        await journal.mark_created("k", "task-1")

    (claim,) = result
    assert (ClaimOutcome.EXISTING, "task-1") == (claim.outcome, claim.task_id)


async def test_a_busy_claim_in_the_same_instance_wakes_at_once(journal: SQLiteJournal) -> None:
    """Two creates of one key in one process: the second is woken when the first lets go."""
    await journal.claim("k", REQUEST, now=NOW)
    result: list[Any] = []

    async def waiter() -> None:
        result.append(await journal.claim("k", REQUEST, now=NOW, wait=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        await journal.release("k")

    (claim,) = result
    assert ClaimOutcome.FRESH == claim.outcome


async def test_a_busy_claim_gives_up_after_its_wait(
    journal: SQLiteJournal, other: SQLiteJournal
) -> None:
    """The wait is bounded: BUSY comes back, naming the owner's lock file."""
    await journal.claim("k", REQUEST, now=NOW)
    started = time.monotonic()

    claim = await other.claim("k", REQUEST, now=NOW, wait=0.2)

    assert ClaimOutcome.BUSY == claim.outcome
    assert 0.2 <= time.monotonic() - started < 2
    assert journal.token == claim.entry.owner
    assert db_owners(journal) / f"{journal.token}.lock" == other.owner_file(journal.token)
    assert other.owner_file(journal.token).exists()


def db_owners(journal: SQLiteJournal) -> pathlib.Path:
    return journal.path.with_name(journal.path.name + ".owners")


async def test_a_write_in_a_cancelled_scope_still_happens(journal: SQLiteJournal) -> None:
    """release() in the finally of a cancelled create still lets the key go."""
    with anyio.CancelScope() as scope:
        await journal.claim("k", REQUEST, now=NOW)
        try:
            scope.cancel()
            await anyio.sleep(1)
        finally:
            await journal.release("k")

    assert None is (await journal.get("k")).owner  # type: ignore[union-attr]


# -- lifetime, files, misuse -----------------------------------------------------------------


async def test_misuse_raises_builtins(db: pathlib.Path, journal: SQLiteJournal) -> None:
    """Unopened, closed, wrong types: TypeError, ValueError or RuntimeError before I/O."""
    unopened = SQLiteJournal(db)
    with pytest.raises(RuntimeError, match="open the journal first"):
        await unopened.get("k")
    await unopened.aclose()
    with pytest.raises(TypeError):
        await journal.claim(1, REQUEST, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware"):
        await journal.claim("k", REQUEST, now=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="not stamped"):
        await journal.claim(
            "k", ExtendRequest(video_id="v", external_task_id="mine"), now=NOW, stamp="s"
        )
    with pytest.raises(ValueError):
        SQLiteJournal(":memory:")
    with pytest.raises(ValueError):
        SQLiteJournal(db, synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="opened once"):
        await journal.__aenter__()
    await journal.aclose()
    await journal.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await journal.claim("k", REQUEST, now=NOW)


async def test_sqlite_journal_implements_the_protocol(db: pathlib.Path) -> None:
    """The session can hold any Journal; SQLiteJournal is one."""
    assert isinstance(SQLiteJournal(db), Journal)


async def test_a_file_of_an_unknown_schema_version_is_refused(db: pathlib.Path) -> None:
    """A journal written by a newer kling_async is not read."""
    async with SQLiteJournal(db):
        pass
    with_connection(db, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(JournalError, match=f"schema version {SCHEMA_VERSION + 1}.*newer"):
        await SQLiteJournal(db).__aenter__()
    assert [db.name] == os.listdir(db.parent)  # nothing left behind


async def test_a_file_that_is_not_a_journal_is_refused(tmp_path: pathlib.Path) -> None:
    """Another SQLite database, or not a database at all: JournalError, the file untouched."""
    other_db = tmp_path / "other.db"
    with_connection(other_db, "CREATE TABLE t (x)")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, certainly not" * 100)

    with pytest.raises(JournalError, match="not a kling_async journal"):
        await SQLiteJournal(other_db).__aenter__()
    with pytest.raises(JournalError, match="cannot be used as a journal"):
        await SQLiteJournal(garbage).__aenter__()
    assert b"not a database" == garbage.read_bytes()[:14]


def with_connection(path: pathlib.Path, statement: str) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def test_close_leaves_no_threads_and_no_lock_files(tmp_path: pathlib.Path) -> None:
    """After aclose the owner lock files are gone and no thread the journal used remains."""
    db = tmp_path / "journal.db"
    before = set(threading.enumerate())
    seen: list[list[str]] = []

    async def main() -> None:
        async with SQLiteJournal(db) as first, SQLiteJournal(db) as second:
            await created(first, "a", "task-a")
            await second.claim("b", REQUEST, now=NOW)
            seen.append(sorted(os.listdir(db_owners(first))))
            assert 2 == len(seen[0])

    anyio.run(main)

    assert [db.name] == os.listdir(tmp_path)  # no .owners, no -wal/-shm after the last close
    deadline = time.monotonic() + 5  # anyio's idle workers stop when the event loop ends
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set() == set(threading.enumerate()) - before


def test_an_unclosed_journal_warns(tmp_path: pathlib.Path) -> None:
    """A journal dropped while open warns (ResourceWarning) and still frees its files."""
    db = tmp_path / "journal.db"
    holder: list[SQLiteJournal] = []

    async def main() -> None:
        journal = SQLiteJournal(db)
        await journal.__aenter__()
        holder.append(journal)

    anyio.run(main)
    with pytest.warns(ResourceWarning, match="never closed"):
        holder.pop().__del__()
    assert [db.name] == os.listdir(tmp_path)


# -- processes ---------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-W", "error", str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_never_both_create_for_one_key(db: pathlib.Path) -> None:
    """Two processes race claim() for the same 200 keys: each key is won exactly once."""
    keys = 200
    children = [child("race", str(db), tag, str(keys)) for tag in ("a", "b")]
    try:
        for process in children:
            assert process.stdout is not None
            assert "ready\n" == process.stdout.readline()
        for process in children:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        # (nothing arrives between "ready" and the result, so readline() buffered nothing)
        outputs = [process.communicate(timeout=120)[0] for process in children]
    finally:
        for process in children:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [0, 0] == [process.returncode for process in children]
    seen_a, seen_b = (json.loads(output) for output in outputs)

    won = {
        tag: {key for key, (outcome, _) in seen.items() if outcome == "fresh"}
        for tag, seen in (("a", seen_a), ("b", seen_b))
    }
    assert set() == won["a"] & won["b"]
    assert {f"key-{i}" for i in range(keys)} == won["a"] | won["b"]
    for key in seen_a:  # the loser waited, then got the winner's task
        winner = "a" if key in won["a"] else "b"
        index = key.removeprefix("key-")
        loser_view = (seen_b if winner == "a" else seen_a)[key]
        assert ["existing", f"task-{winner}-{index}"] == loser_view


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_process_killed_mid_way_leaves_a_consistent_journal(db: pathlib.Path, seed: int) -> None:
    """kill -9 at a random point: INTENT is taken over, SENDING is in doubt, CREATED is kept."""
    rng = random.Random(seed)
    acked: dict[str, str] = {}
    with child("crash", str(db)) as process:  # leaving closes the pipes and reaps the child
        try:
            assert process.stdout is not None
            token = process.stdout.readline().split()[1]
            for _ in range(rng.randrange(3, 300)):
                state, key = process.stdout.readline().split()
                acked[key] = state
            # while the child lives, its keys are its own
            anyio.run(expect_busy, db, "key-0")
            time.sleep(rng.random() * 0.01)
            os.kill(process.pid, signal.SIGKILL)
            # Through the same buffered stream: communicate() would read the pipe past lines
            # readline() has already buffered, and lose them.
            rest = process.stdout.read()
        finally:
            if process.poll() is None:
                process.kill()
    assert -signal.SIGKILL == process.returncode
    for line in rest.splitlines():  # steps committed (and printed) before the kill landed
        state, key = line.split()
        acked[key] = state

    assert "ok" == integrity(db)
    anyio.run(check_after_crash, db, token, acked)


async def expect_busy(db: pathlib.Path, key: str) -> None:
    async with SQLiteJournal(db) as journal:
        claim = await journal.claim(key, request_for(0), now=NOW)
        assert ClaimOutcome.BUSY == claim.outcome


async def check_after_crash(db: pathlib.Path, token: str, acked: dict[str, str]) -> None:
    order = ["intent", "sending", "created"]
    async with SQLiteJournal(db) as journal:
        assert [f"{journal.token}.lock"] == os.listdir(db_owners(journal))  # dead one swept
        pending = {entry.key: entry.state.value for entry in await journal.pending()}
        recorded: dict[str, str] = {}
        index = 0
        while (entry := await journal.get(f"key-{index}")) is not None:
            recorded[entry.key] = entry.state.value
            # nobody let the unfinished ones go: their owner died holding them
            assert (None if entry.state is EntryState.CREATED else token) == entry.owner
            index += 1
        # every acknowledged step is there; at most one step more (committed, not printed)
        assert set(acked) <= set(recorded) <= set(acked) | {f"key-{len(acked)}"}
        ahead = 0
        for key, state in recorded.items():
            step = order.index(state) - (order.index(acked[key]) if key in acked else -1)
            assert step in (0, 1), (key, state, acked.get(key))
            ahead += step
        assert ahead <= 1
        assert {key: s for key, s in recorded.items() if s != "intent"} == pending

        for key, state in recorded.items():
            number = int(key.removeprefix("key-"))
            claim = await journal.claim(key, request_for(number), now=NOW, stamp="fresh")
            if state == "intent":
                assert ClaimOutcome.FRESH == claim.outcome
                assert "fresh" == claim.request.external_task_id
            elif state == "sending":
                assert ClaimOutcome.IN_DOUBT == claim.outcome
                assert f"x-{number}" == claim.request.external_task_id
                assert claim.entry.sent_at is not None
            else:
                assert ClaimOutcome.EXISTING == claim.outcome
                assert (f"task-{number}", {"task_id": f"task-{number}"}) == (
                    claim.task_id,
                    claim.entry.task,
                )


def integrity(path: pathlib.Path) -> str:
    connection = sqlite3.connect(path)
    try:
        result: str = connection.execute("PRAGMA integrity_check").fetchone()[0]
        return result
    finally:
        connection.close()


async def test_entries_are_every_record_in_any_state_oldest_claim_first(
    journal: SQLiteJournal, db: pathlib.Path
) -> None:
    """entries() holds every readable record, whatever its state, oldest claim first, with the
    task JSON recorded; one that cannot be read is left out of it, and keys() still lists it."""
    assert [] == await journal.entries()
    assert [] == await journal.keys()
    await journal.claim("intent", REQUEST, now=NOW + dt.timedelta(seconds=3))
    await created(journal, "finished", "task-1")
    await journal.mark_finished("task-1", TaskStatus.SUCCEED, {"task_id": "task-1"})
    await journal.claim("sending", REQUEST, now=NOW + dt.timedelta(seconds=1))
    await journal.mark_sending("sending", SENT)
    await journal.claim("refused", REQUEST, now=NOW + dt.timedelta(seconds=2))
    await journal.mark_sending("refused", SENT)
    await journal.mark_refused("refused", "no such video", code=1203)
    await journal.claim("broken", REQUEST, now=NOW + dt.timedelta(seconds=4))
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE creates SET request = '{not json' WHERE key = 'broken'")

    entries = await journal.entries()

    assert ["finished", "sending", "refused", "intent"] == [entry.key for entry in entries]
    assert [EntryState.FINISHED, EntryState.SENDING, EntryState.REFUSED, EntryState.INTENT] == [
        entry.state for entry in entries
    ]
    assert {"task_id": "task-1"} == entries[0].task
    assert [entry == await journal.get(entry.key) for entry in entries] == [True] * 4
    assert ["finished", "sending", "refused", "intent", "broken"] == await journal.keys()
