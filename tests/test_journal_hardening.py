"""The journal keeps what it records: a deleted file, a full disk, a vanished task, odd rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sqlite3
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from kling_async import (
    EntryState,
    ExtendRequest,
    InvalidArgumentError,
    Journal,
    JournalError,
    KlingSession,
    NotFoundError,
    PollPolicy,
    RetryPolicy,
    SQLiteJournal,
    TaskStatus,
)
from kling_async.testing import KlingEmulator

from .helpers import gateway, official

if TYPE_CHECKING:
    from types import TracebackType

    from kling_async import Claim, JournalEntry

pytestmark = pytest.mark.anyio


async def journaled_an_hour_ago(
    session: KlingSession, journal: SQLiteJournal, key: str, video_id: str
) -> None:
    """Journal ``key`` as created an hour ago, for a task made now (older than a fresh one
    that a server may not show yet)."""
    task_id = (await session.extend(video_id)).task_id
    claim = await journal.claim(
        key,
        ExtendRequest(video_id=video_id),
        now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1),
    )
    await journal.mark_sending(key, claim.entry.claimed_at)
    await journal.mark_created(key, task_id)


# Small timeouts keep the default retry policy's shape while closing a create's settle window
# (connect_timeout + 2 * read_timeout) within a second or two.
_SHORT = {"connect_timeout": 0.5, "read_timeout": 0.5}


class FlakyJournal:
    """A `Journal` that delegates to a real one, failing some writes as a full disk would.

    ``full_after_send``: every write after the create was sent fails (recording its task, and
    letting the key go). ``finish_failures``: the first so many finishes fail to be recorded.
    ``remove_after_send``: the file is deleted right after the create is recorded as sent.
    """

    def __init__(
        self,
        inner: SQLiteJournal,
        *,
        full_after_send: bool = False,
        finish_failures: int = 0,
        remove_after_send: bool = False,
    ) -> None:
        self.inner = inner
        self.full_after_send = full_after_send
        self.finish_failures = finish_failures
        self.remove_after_send = remove_after_send
        self.full = False
        self.finishes: list[str] = []  # the task ids of every mark_finished call

    async def __aenter__(self) -> FlakyJournal:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.inner.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def claim(
        self,
        key: str,
        request: ExtendRequest,
        *,
        now: dt.datetime,
        stamp: str | None = None,
        wait: float = 0.0,
    ) -> Claim:
        return await self.inner.claim(key, request, now=now, stamp=stamp, wait=wait)

    async def mark_sending(
        self,
        key: str,
        sent_at: dt.datetime,
        *,
        sent_server: dt.datetime | None = None,
        sent_uncertainty: float | None = None,
    ) -> None:
        await self.inner.mark_sending(
            key, sent_at, sent_server=sent_server, sent_uncertainty=sent_uncertainty
        )
        self.full = self.full_after_send
        if self.remove_after_send:
            os.unlink(self.inner.path)

    async def mark_not_sent(self, key: str) -> None:
        await self.inner.mark_not_sent(key)

    async def mark_created(
        self, key: str, task_id: str, task: Mapping[str, Any] | None = None
    ) -> None:
        if self.full:
            raise JournalError("database or disk is full")
        await self.inner.mark_created(key, task_id, task)

    async def mark_refused(self, key: str, reason: str, *, code: int | None = None) -> None:
        await self.inner.mark_refused(key, reason, code=code)

    async def release(self, key: str) -> None:
        if self.full:
            raise JournalError("database or disk is full")
        await self.inner.release(key)

    async def mark_finished(
        self, task_id: str, status: TaskStatus | str, task: Mapping[str, Any] | None = None
    ) -> bool:
        self.finishes.append(task_id)
        if self.finish_failures > 0:
            self.finish_failures -= 1
            raise JournalError("database or disk is full")
        return await self.inner.mark_finished(task_id, status, task)

    async def get(self, key: str) -> JournalEntry | None:
        return await self.inner.get(key)

    async def pending(self) -> list[JournalEntry]:
        return await self.inner.pending()

    async def forget(self, key: str) -> bool:
        return await self.inner.forget(key)

    async def settle(self, key: str, task_id: str) -> JournalEntry:
        return await self.inner.settle(key, task_id)

    async def mark_gone(self, task_id: str, reason: str, *, before: dt.datetime) -> str | None:
        return await self.inner.mark_gone(task_id, reason, before=before)

    async def doubts(self, video_id: str) -> list[JournalEntry]:
        return await self.inner.doubts(video_id)

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        return await self.inner.keys_of(task_ids)


# -- deleted while open ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_journal_file_gone_from_its_path_stops_the_next_keyed_create(
    emu: KlingEmulator, tmp_path: pathlib.Path, how: str
) -> None:
    """Once the open journal's file is deleted or replaced, a keyed create raises before sending."""
    path = tmp_path / "j.sqlite3"
    async with official(emu, journal=path) as session:
        await session.extend("vid-1", key="row-1")
        if how == "deleted":
            os.unlink(path)
        else:  # a copy renamed over it: the same bytes, another file
            shutil.copy(path, tmp_path / "copy.sqlite3")
            os.replace(tmp_path / "copy.sqlite3", path)
        with pytest.raises(JournalError, match="deleted or replaced"):
            await session.extend("vid-2", key="row-2")

    assert 1 == emu.count("create")


async def test_a_journal_deleted_during_a_create_names_the_task_it_made(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The file removed while the create is on the wire: the error names the task and key."""
    inner = SQLiteJournal(tmp_path / "j.sqlite3")
    journal = FlakyJournal(inner, remove_after_send=True)
    async with journal, official(emu, journal=journal) as session:
        with pytest.raises(JournalError, match="deleted or replaced") as raised:
            await session.extend("vid-1", key="row-1")

    assert (list(emu.tasks), "row-1") == ([raised.value.task_id], raised.value.key)


# -- disk full after the create -------------------------------------------------------------


@pytest.mark.parametrize("style", ["official", "gateway"])
async def test_a_create_the_journal_could_not_record_is_named_and_found_by_the_next_run(
    emu: KlingEmulator, tmp_path: pathlib.Path, style: str
) -> None:
    """A failed write after the create names its task and key; the next run's resume finds it."""
    make = official if style == "official" else gateway
    policies = {"retry_policy": RetryPolicy(), "poll_policy": PollPolicy.instant(), **_SHORT}
    path = tmp_path / "j.sqlite3"
    journal = FlakyJournal(SQLiteJournal(path), full_after_send=True)
    async with journal, make(emu, journal=journal, **policies) as session:
        with pytest.raises(JournalError) as raised:
            await session.extend("vid-1", key="row-1")
    [made] = emu.tasks

    async with make(emu, journal=path, **policies) as later:
        handles = await later.resume()
    async with SQLiteJournal(path) as reread:
        entry = await reread.get("row-1")

    assert (made, "row-1") == (raised.value.task_id, raised.value.key)
    assert [made] == [handle.task_id for handle in handles]
    assert 1 == emu.count("create")
    assert entry is not None
    assert (EntryState.CREATED, made) == (entry.state, entry.task_id)


@pytest.mark.parametrize("style", ["official", "gateway"])
async def test_a_key_whose_task_was_not_recorded_finds_it_again_in_the_same_session(
    emu: KlingEmulator, tmp_path: pathlib.Path, style: str
) -> None:
    """Recording the task failed once (a full disk, then freed): the same session's next
    extend with the key looks it up and finds its own task, never paying again."""

    class RecordOnceFails(FlakyJournal):
        failed = False

        async def mark_created(
            self, key: str, task_id: str, task: Mapping[str, Any] | None = None
        ) -> None:
            if not self.failed:
                self.failed = True  # then the disk has room again
                raise JournalError("database or disk is full")
            await self.inner.mark_created(key, task_id, task)

    make = official if style == "official" else gateway
    policies = {"retry_policy": RetryPolicy(), "poll_policy": PollPolicy.instant(), **_SHORT}
    journal = RecordOnceFails(SQLiteJournal(tmp_path / "j.sqlite3"))
    async with journal, make(emu, journal=journal, **policies) as session:
        with pytest.raises(JournalError) as raised:
            await session.extend("vid-1", key="row-1")
        again = await session.extend("vid-1", key="row-1")
        entry = await journal.get("row-1")

    assert raised.value.task_id == again.task_id
    assert 1 == emu.count("create")
    assert entry is not None
    assert (EntryState.CREATED, again.task_id) == (entry.state, entry.task_id)


# -- disk full when a wait sees its task finish ---------------------------------------------


async def test_a_finish_the_journal_could_not_record_does_not_fail_the_wait(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """wait() and as_completed() return finished tasks though the write fails; it is done later."""
    async with FlakyJournal(SQLiteJournal(tmp_path / "j.sqlite3"), finish_failures=3) as journal:
        async with official(emu, journal=journal) as session:
            first, second, third = [
                await session.extend("vid-1", key=f"row-{n}") for n in (1, 2, 3)
            ]
            done = await first.wait()
            completed = [task async for task in session.as_completed([second, third])]
            before_close = await journal.get("row-1")
        states = [await journal.get(f"row-{n}") for n in (1, 2, 3)]

    assert TaskStatus.SUCCEED == done.status
    assert {second.task_id, third.task_id} == {task.task_id for task in completed}
    assert 0 == journal.finish_failures
    assert before_close is not None
    assert EntryState.CREATED == before_close.state  # every try before aclose() failed
    assert [EntryState.FINISHED] * 3 == [entry.state if entry else None for entry in states]


async def test_waits_that_end_together_write_each_finish_once(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Forty waits ending in one list round queue their finishes behind one writer (each
    of them rewriting every queued finish made a thousand waits a million writes)."""
    journal = FlakyJournal(SQLiteJournal(tmp_path / "j.sqlite3"))
    async with journal, official(emu, journal=journal, poll_policy=PollPolicy.instant()) as session:
        handles = [await session.extend("vid-1", key=f"row-{n}") for n in range(40)]
        done = await asyncio.gather(*(handle.wait() for handle in handles))
        states = [await journal.get(f"row-{n}") for n in range(40)]

    assert {handle.task_id for handle in handles} == {task.task_id for task in done}
    assert sorted(handle.task_id for handle in handles) == sorted(journal.finishes)
    assert [EntryState.FINISHED] * 40 == [entry.state if entry else None for entry in states]


# -- a task that vanished on the server -----------------------------------------------------


async def test_a_task_that_vanished_is_recorded_gone_until_the_key_is_forgotten(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """404 on a journaled task records it GONE: resume skips it, extend refuses, forget frees it."""
    journal = SQLiteJournal(tmp_path / "j.sqlite3")
    async with journal, official(emu, journal=journal) as session:
        await journaled_an_hour_ago(session, journal, "row-1", "vid-1")
        handle = await session.extend("vid-1", key="row-1")
        emu.tasks.pop(handle.task_id)
        with pytest.raises(NotFoundError):
            await handle.wait()
        entry = await journal.get("row-1")
        resumed = await session.resume()
        with pytest.raises(NotFoundError, match="row-1") as refused:
            await session.extend("vid-1", key="row-1")
        creates = emu.count("create")
        forgotten = await session.forget("row-1")
        again = await session.extend("vid-1", key="row-1")

    assert entry is not None
    assert EntryState.GONE == entry.state
    assert [] == resumed
    assert handle.task_id == refused.value.task_id
    assert 1 == creates
    assert forgotten
    assert 2 == emu.count("create")
    assert again.task_id != handle.task_id


async def test_a_key_whose_task_vanished_can_be_settled_to_another_task(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """settle() records another task of the same video, never one of another video or key."""
    journal = SQLiteJournal(tmp_path / "j.sqlite3")
    async with journal, official(emu, journal=journal) as session:
        await journaled_an_hour_ago(session, journal, "row-1", "vid-1")
        handle = await session.extend("vid-1", key="row-1")
        other_key = await session.extend("vid-1", key="row-2")
        other_video = await session.extend("vid-2")
        spare = await session.extend("vid-1")
        emu.tasks.pop(handle.task_id)
        with pytest.raises(NotFoundError):
            await handle.wait()
        with pytest.raises(ValueError, match="vid-2"):
            await session.settle("row-1", other_video.task_id)
        with pytest.raises(ValueError, match="row-2"):
            await session.settle("row-1", other_key.task_id)
        settled = await session.settle("row-1", spare.task_id)
        again = await session.extend("vid-1", key="row-1")
        entry = await journal.get("row-1")

    assert spare.task_id == settled.task_id == again.task_id
    assert entry is not None
    assert (EntryState.CREATED, spare.task_id) == (entry.state, entry.task_id)
    assert 4 == emu.count("create")


async def test_a_404_for_a_task_just_created_does_not_record_it_gone(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A server may not show a task it just made: a 404 then fails the wait but leaves the
    key CREATED, so the next run waits for it again instead of paying for a new one."""
    journal = SQLiteJournal(tmp_path / "j.sqlite3")
    async with journal, official(emu, journal=journal) as session:
        handle = await session.extend("vid-1", key="row-1")
        emu.tasks.pop(handle.task_id)
        with pytest.raises(NotFoundError):
            await handle.wait()
        entry = await journal.get("row-1")

    assert entry is not None
    assert (EntryState.CREATED, handle.task_id) == (entry.state, entry.task_id)


async def test_only_a_key_in_doubt_or_gone_can_be_settled(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A key that has its task (or is being created) is never settled to another one."""
    journal = SQLiteJournal(tmp_path / "j.sqlite3")
    async with journal, official(emu, journal=journal) as session:
        handle = await session.extend("vid-1", key="row-1")
        spare = await session.extend("vid-1")
        with pytest.raises(ValueError, match="created"):
            await session.settle("row-1", spare.task_id)
        entry = await journal.get("row-1")

    assert entry is not None
    assert (EntryState.CREATED, handle.task_id) == (entry.state, entry.task_id)


# -- odd rows -------------------------------------------------------------------------------

_ODD_ROWS = {
    "request not JSON": "UPDATE creates SET request = '{not json' WHERE key = ?",
    "unknown field": (
        "UPDATE creates SET request = json_set(request, '$.colour', 'red') WHERE key = ?"
    ),
    "bad timestamp": "UPDATE creates SET claimed_at = 'yesterday' WHERE key = ?",
    "created without task id": "UPDATE creates SET task_id = NULL WHERE key = ?",
}


@pytest.mark.parametrize("oddity", sorted(_ODD_ROWS))
async def test_a_row_that_cannot_be_read_is_a_journal_error_naming_its_key(
    emu: KlingEmulator, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, oddity: str
) -> None:
    """get() and extend() raise JournalError naming the odd row's key; resume() goes on."""
    path = tmp_path / "j.sqlite3"
    async with official(emu, journal=path) as session:
        good = await session.extend("vid-1", key="good")
        await session.extend("vid-1", key="odd")
    with sqlite3.connect(path) as db:
        db.execute(_ODD_ROWS[oddity], ("odd",))
    db.close()

    async with SQLiteJournal(path) as journal:
        with pytest.raises(JournalError) as read:
            await journal.get("odd")
        async with official(emu, journal=journal) as session:
            with pytest.raises(JournalError) as extended:
                await session.extend("vid-1", key="odd")
            with caplog.at_level(logging.ERROR, logger="kling_async"):
                resumed = await session.resume()

    assert ("odd", "odd") == (read.value.key, extended.value.key)
    assert [good.task_id] == [handle.task_id for handle in resumed]
    assert any("'odd'" in record.getMessage() for record in caplog.records)
    assert 2 == emu.count("create")


# -- a key that is not text -----------------------------------------------------------------


async def test_a_key_with_a_lone_surrogate_is_an_invalid_argument(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """extend, settle and forget refuse a key with a lone surrogate, naming ``key``."""
    key = "row-\ud800"
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        with pytest.raises(InvalidArgumentError) as extending:
            await session.extend("vid-1", key=key)
        with pytest.raises(InvalidArgumentError) as settling:
            await session.settle(key, "123")
        with pytest.raises(InvalidArgumentError) as forgetting:
            await session.forget(key)

    assert ["key"] * 3 == [e.value.field for e in (extending, settling, forgetting)]
    assert [] == emu.requests


# -- schema migration -----------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE creates (
    key            TEXT PRIMARY KEY NOT NULL,
    fingerprint    TEXT NOT NULL,
    request        TEXT NOT NULL,
    stamped        INTEGER NOT NULL,
    external_task_id TEXT,
    state          TEXT NOT NULL
        CHECK (state IN ('intent', 'sending', 'created', 'refused', 'finished')),
    owner          TEXT,
    claimed_at     TEXT NOT NULL,
    sent_at        TEXT,
    task_id        TEXT,
    task           TEXT,
    status         TEXT,
    refusal_code   INTEGER,
    refusal_reason TEXT
) WITHOUT ROWID;
CREATE INDEX creates_task_id ON creates (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX creates_open ON creates (state) WHERE state IN ('sending', 'created');
CREATE INDEX creates_owner ON creates (owner) WHERE owner IS NOT NULL;
"""


def _canonical(request: dict[str, Any]) -> str:
    return json.dumps(request, sort_keys=True, separators=(",", ":"))


async def test_a_version_1_journal_is_upgraded_and_reads_back_the_same(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A schema-1 file opens, becomes schema 2, and its created and sending rows are kept."""
    path = tmp_path / "v1.sqlite3"
    created = {"video_id": "vid-1"}
    sending = {"video_id": "vid-2", "external_task_id": "ext-2"}
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    db.execute(f"PRAGMA application_id = {0x4B4C4A31}")  # "KLJ1": a kling_async journal
    db.execute("PRAGMA user_version = 1")
    db.executemany(
        "INSERT INTO creates (key, fingerprint, request, stamped, external_task_id, state,"
        " claimed_at, sent_at, task_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                "row-created",
                hashlib.sha256(_canonical(created).encode()).hexdigest(),
                _canonical(created),
                0,
                None,
                "created",
                "2026-01-02T03:04:05.000000+00:00",
                "2026-01-02T03:04:06.000000+00:00",
                "800000000000000001",
            ),
            (
                "row-sending",
                hashlib.sha256(_canonical({"video_id": "vid-2"}).encode()).hexdigest(),
                _canonical(sending),
                1,
                "ext-2",
                "sending",
                "2026-01-02T03:04:07.000000+00:00",
                "2026-01-02T03:04:08.000000+00:00",
                None,
            ),
        ],
    )
    db.commit()
    db.close()

    async with SQLiteJournal(path) as journal:
        first = await journal.get("row-created")
        second = await journal.get("row-sending")
        doubts = await journal.doubts("vid-2")
        pending = await journal.pending()
        async with official(emu, journal=journal) as session:
            handle = await session.extend("vid-1", key="row-created")
    with sqlite3.connect(path) as reread:
        version = reread.execute("PRAGMA user_version").fetchone()[0]
    reread.close()

    assert 2 == version
    assert first is not None
    assert second is not None
    assert (
        EntryState.CREATED,
        ExtendRequest(video_id="vid-1"),
        "800000000000000001",
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    ) == (first.state, first.request, first.task_id, first.claimed_at)
    assert (
        EntryState.SENDING,
        ExtendRequest(video_id="vid-2", external_task_id="ext-2"),
        True,
        dt.datetime(2026, 1, 2, 3, 4, 8, tzinfo=dt.timezone.utc),
    ) == (second.state, second.request, second.stamped, second.sent_at)
    assert ["row-sending"] == [entry.key for entry in doubts]
    assert ["row-created", "row-sending"] == [entry.key for entry in pending]
    assert "800000000000000001" == handle.task_id
    assert 0 == emu.count("create")


def test_the_flaky_journal_is_a_journal() -> None:
    """The wrapper these tests use implements the public `Journal` protocol."""
    assert isinstance(FlakyJournal(SQLiteJournal("unused.sqlite3")), Journal)
