"""The fleet's journal in Redis: the journal contract, fencing, leases, processes, sessions.

The implementation-neutral contract tests of tests/test_journal.py run here again with
`RedisJournal`s (``journal`` and ``other`` are two fleet instances on one real Redis).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from kling_async._fleet import LEASE, Fleet
from kling_async._journal import ClaimOutcome, EntryState, Journal, JournalError
from kling_async._redis_journal import RedisJournal
from kling_async.errors import ClaimLostError, FleetUnavailableError
from kling_async.testing import KlingEmulator

from . import test_journal as contract
from .fleet_journal_child import ACCOUNT, request_for
from .helpers import official
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

NOW, SENT, REQUEST = contract.NOW, contract.SENT, contract.REQUEST
CHILD = pathlib.Path(__file__).with_name("fleet_journal_child.py")
ROOT = pathlib.Path(__file__).parent.parent

# -- the contract, on Redis ---------------------------------------------------------------

_NEUTRAL = [
    "test_a_new_key_is_fresh_and_records_the_stamped_request",
    "test_sending_then_created_is_existing_for_every_later_claim",
    "test_a_finished_task_is_recorded_and_leaves_pending",
    "test_a_key_reused_for_another_request_is_a_value_error",
    "test_the_same_request_spelled_differently_is_the_same",
    "test_a_claim_with_the_recorded_request_matches",
    "test_not_sent_goes_back_to_intent_and_stays_owned",
    "test_a_released_intent_is_taken_over_with_the_new_stamp",
    "test_a_refused_create_is_refused_on_reuse_until_forgotten",
    "test_a_key_a_live_instance_owns_cannot_be_forgotten",
    "test_writes_need_ownership_and_the_right_state",
    "test_one_task_id_is_never_recorded_for_two_keys",
    "test_pending_lists_unfinished_tasks_and_creates_in_doubt",
    "test_a_busy_claim_waits_for_the_owner_to_finish",
    "test_a_busy_claim_in_the_same_instance_wakes_at_once",
    "test_a_write_in_a_cancelled_scope_still_happens",
]
for _name in _NEUTRAL:  # collected here with this module's journal/other fixtures
    globals()[_name] = getattr(contract, _name)


async def test_a_sending_key_nobody_owns_is_in_doubt_with_the_send_on_the_readers_clock(
    journal: RedisJournal, other: RedisJournal
) -> None:
    """A create sent and never answered is IN_DOUBT: the claimant owns it to reconcile, and
    the send is placed on the claimant's clock by Redis's (the sender's clock said 2026-01-02:
    the send was a moment ago whatever it said)."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    await journal.mark_sending("k", SENT)
    await journal.release("k")

    claim = await other.claim("k", REQUEST, now=NOW, stamp="ignored")

    assert ClaimOutcome.IN_DOUBT == claim.outcome
    assert ("s", other.token) == (claim.request.external_task_id, claim.entry.owner)
    assert claim.entry.sent_at is not None
    since = dt.datetime.now(dt.timezone.utc) - claim.entry.sent_at
    assert dt.timedelta(0) <= since < dt.timedelta(seconds=5)
    assert ClaimOutcome.BUSY == (await journal.claim("k", REQUEST, now=NOW)).outcome


@pytest.fixture
async def fleets(redis_url: str) -> AsyncIterator[Callable[[], Any]]:
    """Open fleet instances on the test's Redis (each another process, as far as owners go)."""
    async with AsyncExitStack() as stack:

        async def make() -> Fleet:
            fleet = Fleet(redis_url, account=ACCOUNT)
            await fleet.open()
            stack.push_async_callback(fleet.aclose)
            return fleet

        yield make


@pytest.fixture
async def journal(fleets: Callable[[], Any]) -> AsyncIterator[RedisJournal]:
    async with RedisJournal(await fleets()) as opened:
        yield opened


@pytest.fixture
async def other(fleets: Callable[[], Any]) -> AsyncIterator[RedisJournal]:
    async with RedisJournal(await fleets()) as opened:
        yield opened


async def test_redis_journal_implements_the_protocol(journal: RedisJournal) -> None:
    assert isinstance(journal, Journal)


async def test_misuse_raises_builtins(fleets: Callable[[], Any]) -> None:
    fleet = await fleets()
    unopened = RedisJournal(fleet)
    with pytest.raises(RuntimeError, match="open the journal first"):
        await unopened.get("k")
    async with RedisJournal(fleet) as journal:
        with pytest.raises(ValueError, match="aware"):
            await journal.claim("k", REQUEST, now=dt.datetime(2026, 1, 1))
        with pytest.raises(RuntimeError, match="opened once"):
            await journal.__aenter__()
    await journal.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await journal.claim("k", REQUEST, now=NOW)
    assert not fleet.closed  # the fleet's client is borrowed


# -- leases and fencing ---------------------------------------------------------------------


async def test_a_key_whose_owner_died_is_taken_over_and_the_stale_owner_is_fenced(
    journal: RedisJournal, other: RedisJournal, redis_url: str
) -> None:
    """A lapsed lease: SENDING is IN_DOUBT for the next claim, and the stale owner's writes
    raise ClaimLostError and change nothing."""
    await journal.claim("k", REQUEST, now=NOW, stamp="s")
    await journal.mark_sending("k", SENT)
    await journal.claim("i", REQUEST, now=NOW, stamp="s-i")
    assert ClaimOutcome.BUSY == (await other.claim("k", REQUEST, now=NOW)).outcome
    client = aioredis.Redis.from_url(redis_url)
    await client.delete(journal._fleet.alive_key(journal.token))  # its lease ran out

    doubt = await other.claim("k", REQUEST, now=NOW)
    fresh = await other.claim("i", REQUEST, now=NOW, stamp="s-new")
    before = await other.get("k")
    with pytest.raises(ClaimLostError) as lost:
        await journal.mark_created("k", "task-stale")
    with pytest.raises(ClaimLostError):
        await journal.mark_sending("i", SENT)
    await journal.release("k")  # a lost claim: nothing to let go, nothing raised
    after = await other.get("k")
    await client.aclose()

    assert ClaimOutcome.IN_DOUBT == doubt.outcome
    assert (ClaimOutcome.FRESH, "s-new") == (fresh.outcome, fresh.request.external_task_id)
    assert "k" == lost.value.key
    assert before == after
    assert (EntryState.SENDING, other.token, None) == (after.state, after.owner, after.task_id)  # type: ignore[union-attr]
    assert {} == await other.keys_of(["task-stale"])
    await other.mark_created("k", "task-found")
    assert {"task-found": "k"} == await journal.keys_of(["task-found", "nope"])


async def test_a_busy_claim_takes_over_once_the_owner_lease_lapses(
    journal: RedisJournal, other: RedisJournal, redis_url: str
) -> None:
    """claim(wait=) on a live owner's INTENT waits, then takes it over when the lease ends."""
    await journal.claim("k", REQUEST, now=NOW)
    client = aioredis.Redis.from_url(redis_url)
    alive = journal._fleet.alive_key(journal.token)
    await client.pexpire(alive, 300)  # as if its renewals had stopped
    journal._fleet._tasks.copy().pop().cancel()  # stop renewing it

    claim = await other.claim("k", REQUEST, now=NOW, wait=10)
    await client.aclose()

    assert (ClaimOutcome.FRESH, other.token) == (claim.outcome, claim.entry.owner)


async def test_two_instances_claiming_the_same_fresh_keys_at_once_get_each_once(
    fleets: Callable[[], Any],
) -> None:
    journals = [RedisJournal(await fleets()) for _ in range(3)]
    outcomes: list[tuple[str, ClaimOutcome]] = []
    async with AsyncExitStack() as stack:
        for journal in journals:
            await stack.enter_async_context(journal)

        async def claim(journal: RedisJournal, index: int) -> None:
            key = f"key-{index}"
            got = await journal.claim(key, REQUEST, now=NOW)
            outcomes.append((key, got.outcome))

        async with anyio.create_task_group() as group:
            for index in range(50):
                for journal in journals:
                    group.start_soon(claim, journal, index)

    fresh = sorted(key for key, outcome in outcomes if outcome is ClaimOutcome.FRESH)
    assert sorted(f"key-{index}" for index in range(50)) == fresh
    assert {ClaimOutcome.FRESH, ClaimOutcome.BUSY} == {outcome for _, outcome in outcomes}


async def test_pending_and_doubts_are_the_whole_fleets(
    journal: RedisJournal, other: RedisJournal
) -> None:
    later = NOW + dt.timedelta(seconds=5)
    await contract.created(other, "b-late", "task-b")  # type: ignore[arg-type]
    await journal.claim("a-doubt", REQUEST, now=later)
    await journal.mark_sending("a-doubt", SENT)
    await journal.release("a-doubt")
    await journal.claim("c-mine", REQUEST, now=NOW)
    await journal.mark_sending("c-mine", SENT)

    pending = [(entry.key, entry.state) for entry in await other.pending()]
    doubts = sorted(entry.key for entry in await other.doubts(REQUEST.video_id))

    assert [("b-late", EntryState.CREATED), ("a-doubt", EntryState.SENDING)] == pending
    assert ["a-doubt", "c-mine"] == doubts


async def test_settle_and_gone_keep_the_indexes(journal: RedisJournal) -> None:
    await contract.created(journal, "k", "task-1")  # type: ignore[arg-type]
    now = dt.datetime.now(dt.timezone.utc)
    assert None is await journal.mark_gone("task-1", "404", before=now - _FIVE_MINUTES)  # new
    assert "k" == await journal.mark_gone("task-1", "404", before=now + dt.timedelta(days=1))
    assert [] == await journal.pending()
    settled = await journal.settle("k", "task-2")
    with pytest.raises(ValueError, match="created"):
        await journal.settle("k", "task-3")

    assert (EntryState.CREATED, "task-2", None) == (settled.state, settled.task_id, settled.owner)
    assert settled == await journal.get("k")
    assert {"task-2": "k"} == await journal.keys_of(["task-1", "task-2"])
    assert ["k"] == [entry.key for entry in await journal.pending()]
    assert await journal.forget("k")
    assert {} == await journal.keys_of(["task-2"])


_FIVE_MINUTES = dt.timedelta(minutes=5)


async def test_gone_measures_a_task_s_age_on_redis_s_clock(
    journal: RedisJournal, other: RedisJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock runs 10 minutes ahead of the one that sent the create does not
    take the task made just now for one made over 5 minutes ago (a new task's 404 is not
    proof that it is gone)."""
    await contract.created(journal, "k", "task-1")  # type: ignore[arg-type]
    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
    monkeypatch.setattr("kling_async._redis_journal_store.utc_now", lambda: ahead)

    assert None is await other.mark_gone("task-1", "404", before=ahead - _FIVE_MINUTES)
    entry = await other.get("k")
    assert entry is not None
    assert EntryState.CREATED == entry.state


# -- Redis unreachable ------------------------------------------------------------------------


async def test_redis_gone_is_a_typed_error_and_the_session_sends_nothing(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Both a JournalError (the session's handling) and a FleetUnavailableError; no create."""
    with RedisServer(directory=tmp_path) as server:
        fleet = Fleet(
            aioredis.Redis.from_url(server.url, socket_timeout=1, retry=None),
            account=ACCOUNT,
        )
        await fleet.open()
        journal = RedisJournal(fleet)
        async with journal, official(emu, journal=journal) as session:
            server.stop()
            with pytest.raises(FleetUnavailableError) as failed:
                await session.extend("vid-1", key="row-1")
            assert isinstance(failed.value, JournalError)
            assert isinstance(failed.value.__cause__, FleetUnavailableError)
            assert "row-1" == failed.value.key
        await fleet.aclose()
        await fleet.client.aclose()
    assert 0 == emu.count("create")


# -- measured -------------------------------------------------------------------------------


async def test_round_trips_and_memory_of_one_keyed_create(
    journal: RedisJournal, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """claim -> sending -> created (-> release) -> finished: 4 script calls; the record
    of a finished key is kept (no TTL) and measured."""
    client = aioredis.Redis.from_url(redis_url)
    await contract.created(journal, "warm", "task-warm")  # scripts loaded
    calls: list[str] = []
    store = journal._store
    real = store.redis

    async def counted(what: str, call: Any, **options: Any) -> Any:
        calls.append(what)
        return await real(what, call, **options)

    store.redis = counted  # type: ignore[method-assign]
    claim = await journal.claim("row-1", REQUEST, now=NOW, stamp="kling-async-" + "0" * 32)
    await journal.mark_sending("row-1", SENT, sent_server=SENT, sent_uncertainty=0.25)
    await journal.mark_created("row-1", "8" * 18, {"task_id": "8" * 18, "task_status": "submitted"})
    await journal.release("row-1")
    await journal.mark_finished("8" * 18, "succeed")
    prefix = store.rec
    record = await client.memory_usage(prefix + "row-1")
    ttl = await client.ttl(prefix + "row-1")
    tasks = await client.memory_usage(store.tasks)
    await client.aclose()
    with capsys.disabled():
        print(
            f"\nredis journal: {len(calls)} round trips per keyed create {calls}; "
            f"finished record {record} bytes, task index {tasks} bytes for 2 tasks"
        )

    assert ClaimOutcome.FRESH == claim.outcome
    assert 4 == len(calls)
    assert -1 == ttl  # a paid task's record is never forgotten on its own


# -- processes --------------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.crash
def test_two_processes_claiming_the_same_keys_create_each_once(redis_url: str) -> None:
    keys = 60
    children = [child("race", redis_url, tag, str(keys)) for tag in ("a", "b")]
    try:
        for process in children:
            assert process.stdout is not None
            assert "ready" == process.stdout.readline().strip()
        for process in children:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(process.communicate(timeout=60)[0]) for process in children]
    finally:
        for process in children:
            process.kill()
    for index in range(keys):
        key = f"key-{index}"
        outcomes = sorted(result[key][0] for result in results)
        assert ["existing", "fresh"] == outcomes, (key, outcomes)
        task_ids = {result[key][1] for result in results} - {None}
        assert 1 == len(task_ids)


@pytest.mark.crash
async def test_a_process_killed_while_sending_is_in_doubt_once_its_lease_lapses(
    journal: RedisJournal, redis_url: str
) -> None:
    """kill -9 mid-create: BUSY while its lease runs, IN_DOUBT (never FRESH) after."""
    process = child("crash", redis_url)
    try:
        assert process.stdout is not None
        line = await anyio.to_thread.run_sync(process.stdout.readline)
        assert line.startswith("sending ")
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = time.monotonic()
        busy = await journal.claim("key-0", request_for(0), now=NOW)
        claim = await journal.claim("key-0", request_for(0), now=NOW, wait=LEASE + 5)
        waited = time.monotonic() - killed
    finally:
        process.kill()
        process.communicate()

    assert (ClaimOutcome.BUSY, line.split()[1]) == (busy.outcome, busy.entry.owner)
    assert ClaimOutcome.IN_DOUBT == claim.outcome
    assert "crash-0" == claim.request.external_task_id
    assert waited > LEASE - 1.5  # not before the lease (renewed each second) ran out


# -- sessions ---------------------------------------------------------------------------------


@pytest.mark.crash
async def test_keyed_extends_in_two_processes_create_each_key_once_and_resume_finds_them(
    emu: KlingEmulator, fleets: Callable[[], Any], redis_url: str
) -> None:
    """Two processes extend the same keys through KlingSession(journal=RedisJournal(fleet)):
    one create per key at the emulator, both get its task, a third session resumes them."""
    keys = 20
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(CHILD), "extend", redis_url, emu.base_url, str(keys)]
    processes = [
        await anyio.open_process(argv, env=env, stderr=subprocess.DEVNULL) for _ in range(2)
    ]
    outputs: list[dict[str, str]] = []
    try:
        for process in processes:
            assert process.stdout is not None
            ready = await process.stdout.receive()
            assert b"ready" in ready
        for process in processes:
            assert process.stdin is not None
            await process.stdin.send(b"go\n")

        async def collect(process: Any) -> None:
            chunks = [chunk async for chunk in process.stdout]
            await process.wait()
            outputs.append(json.loads(b"".join(chunks)))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for process in processes:
                    group.start_soon(collect, process)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.aclose()
    creates = emu.count("create")
    journal = RedisJournal(await fleets())
    async with journal, official(emu, journal=journal) as session:
        resumed = await session.resume()

    assert keys == creates
    assert outputs[0] == outputs[1]
    assert keys == len(set(outputs[0].values()))
    assert set(outputs[0].values()) == {handle.task_id for handle in resumed}
    assert keys == emu.count("create")  # resume sent nothing
