"""Waiting at scale: one poller per task, list refresh, as_completed, extend_many, the pace."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import pytest

from kling_async import (
    ExtendRequest,
    KlingError,
    KlingSession,
    ListUnavailableError,
    NotFoundError,
    PollPolicy,
    RetryPolicy,
    SubmitTimeoutError,
    TaskHandle,
    TaskStatus,
    WaitTimeoutError,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

pytestmark = pytest.mark.anyio


async def _gather_waits(handles: list[TaskHandle]) -> None:
    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(handle.wait)


# -- one poller per task id ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["one handle", "handles from task()"])
async def test_a_hundred_waiters_cost_what_one_costs(how: str) -> None:
    """100 waits on one task id send the GETs one wait sends (single-flight polling)."""
    counts = []
    for waiters in (1, 100):
        async with (
            KlingEmulator(polls_to_start=3, polls_to_finish=3) as emulator,
            gateway(emulator) as session,
        ):
            made = await session.extend("vid-1")
            if how == "one handle":
                handles = [made] * waiters
            else:
                handles = [session.task(made.task_id) for _ in range(waiters)]
            await _gather_waits(handles)
            counts.append(emulator.count("query"))
            assert all(h.done for h in handles)
    assert counts[0] == counts[1]


async def test_concurrent_polls_share_one_query(emu: KlingEmulator, session: KlingSession) -> None:
    """Fifty poll() calls at once send one query and all see its answer."""
    handle = await session.extend("vid-1")
    results = []

    async def poll() -> None:
        results.append(await handle.poll())

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(poll)

    assert 1 == emu.count("query")
    assert 1 == len({id(task) for task in results})


async def test_handles_of_one_id_share_the_newest_state(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """A poll through one handle is seen by every handle of that task id in the session."""
    made = await session.extend("vid-1")
    again = session.task(made.task_id)
    await again.wait()
    assert made.done
    assert made.last is again.last


async def test_cancelling_the_waiter_doing_the_poll_never_stalls_the_others() -> None:
    """The leader's query is cancelled mid-flight; the next waiter takes over and finishes."""
    async with KlingEmulator() as emulator, gateway(emulator) as session:
        handle = await session.extend("vid-1")
        emulator.inject(Fault.delay(30), route="query")  # the leader's query hangs
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                leader = anyio.CancelScope()

                async def lead() -> None:
                    with leader:
                        await handle.wait()

                group.start_soon(lead)
                while emulator.count("query") < 1:
                    await anyio.sleep(0)
                group.start_soon(handle.wait)
                while session.statistics().waits_pending < 2:
                    await anyio.sleep(0)
                leader.cancel()
            # the follower finished the wait on its own
        assert handle.done
        assert 0 == session.statistics().waits_pending


async def test_a_poll_error_reaches_every_waiter_that_dozed_through_it() -> None:
    """A query that fails for good fails each wait on it once, not once per retry turn."""
    async with KlingEmulator() as emulator, gateway(emulator) as session:
        handle = session.task("no-such-task")
        errors: list[BaseException] = []

        async def wait() -> None:
            try:
                await handle.wait()
            except NotFoundError as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(wait)

    assert 20 == len(errors)
    assert 1 == emulator.count("query")


# -- list refresh ----------------------------------------------------------------------------------


async def test_the_list_refreshes_more_pending_tasks_than_a_page_among_foreign_ones() -> None:
    """600 waits (more than a 500-task page) among 40 other clients' tasks: few lists, no query."""
    async with KlingEmulator() as emulator:
        async with official(emulator) as other:
            for n in range(20):
                await other.extend(f"foreign-{n}")
        async with official(emulator) as session:
            handles = [await session.extend(f"vid-{n}") for n in range(600)]
            async with official(emulator) as other:
                for n in range(20):  # newer than ours: they come first in the list
                    await other.extend(f"foreign-late-{n}")
            queries = emulator.count("query")
            await _gather_waits(handles)
            stats = session.statistics()

    assert all(h.done for h in handles)
    assert queries == emulator.count("query")  # every refresh came through the list
    assert stats.list_refresh is None  # still on (auto), never found wanting
    assert 2 <= stats.list_requests == emulator.count("list") <= 10
    foreign = [t for t in emulator.tasks.values() if t.video_id.startswith("foreign")]
    assert all(t.status == "submitted" or t.polls > 0 for t in foreign)  # listed, not confused


async def test_a_task_the_list_does_not_show_is_queried_on_its_own() -> None:
    """A handle made from an external id is not in the list (it shows task ids): it is queried."""
    async with KlingEmulator() as emulator, official(emulator) as session:
        made = [await session.extend(f"vid-{n}", external_task_id=f"ext-{n}") for n in range(3)]
        by_external = session.task("ext-0")
        await _gather_waits([*made[1:], by_external])

    assert by_external.done
    assert emulator.count("query") >= 1


async def test_gateway_mode_switches_to_queries_after_the_first_list_refusal() -> None:
    """Where the list is not routed (404), one list try turns list refresh off for good."""
    async with KlingEmulator(list_mode="404") as emulator, gateway(emulator) as session:
        handles = [await session.extend(f"vid-{n}") for n in range(5)]
        await _gather_waits(handles)
        more = [await session.extend(f"vid-more-{n}") for n in range(5)]
        await _gather_waits(more)
        stats = session.statistics()

    assert 1 == emulator.count("list")
    assert stats.list_refresh is False
    assert all(h.done for h in handles + more)


async def test_list_refresh_false_never_lists() -> None:
    """``list_refresh=False`` polls each task by its own query."""
    async with KlingEmulator() as emulator, official(emulator, list_refresh=False) as session:
        handles = [await session.extend(f"vid-{n}") for n in range(5)]
        await _gather_waits(handles)
    assert 0 == emulator.count("list")


async def test_list_refresh_true_keeps_listing_and_reports_a_missing_list() -> None:
    """``list_refresh=True`` forces the list: where it is missing, the wait says so."""
    async with KlingEmulator(list_mode="html") as emulator:
        async with gateway(emulator) as session:
            handles = [await session.extend(f"vid-{n}") for n in range(2)]
        async with gateway(emulator, list_refresh=True) as session:
            forced = session.as_completed([session.task(h.task_id) for h in handles])
            with pytest.raises(ListUnavailableError):
                await anext(forced)


def test_list_refresh_must_be_none_or_a_bool() -> None:
    """A typo such as list_refresh="auto" is a TypeError up front."""
    with pytest.raises(TypeError, match="list_refresh"):
        KlingSession("key", list_refresh="auto")  # type: ignore[arg-type]  # wrong on purpose


# -- as_completed ----------------------------------------------------------------------------------


async def test_as_completed_yields_in_finish_order_and_never_raises_for_failed() -> None:
    """Tasks come out as they finish; a failed one is yielded like any other."""
    async with KlingEmulator(auto_advance=False) as emulator, official(emulator) as session:
        a, b, c = [await session.extend(f"vid-{n}") for n in "abc"]
        results = session.as_completed([a, b, c])
        emulator.set_status(c.task_id, "succeed")
        first = await anext(results)
        emulator.set_status(a.task_id, "failed", message="content risk control")
        second = await anext(results)
        emulator.set_status(b.task_id, "succeed")
        third = await anext(results)
        with pytest.raises(StopAsyncIteration):
            await anext(results)

    assert [c.task_id, a.task_id, b.task_id] == [first.task_id, second.task_id, third.task_id]
    assert TaskStatus.FAILED is second.status


async def test_as_completed_timeout_yields_the_finished_then_names_the_pending() -> None:
    """On timeout the finished tasks were yielded and WaitTimeoutError.pending has the rest."""
    async with KlingEmulator(auto_advance=False) as emulator, official(emulator) as session:
        a, b, c = [await session.extend(f"vid-{n}") for n in "abc"]
        emulator.set_status(b.task_id, "succeed")
        seen: list[str] = []

        async def collect() -> None:
            async for task in session.as_completed([a, b, c, b], timeout=0.05):
                seen.append(task.task_id)

        with pytest.raises(WaitTimeoutError) as caught:
            await collect()
        assert 0 == session.statistics().waits_pending

    assert [b.task_id] == seen
    assert (a.task_id, c.task_id) == caught.value.pending
    assert caught.value.task_id is None


async def test_as_completed_refuses_handles_of_another_session(emu: KlingEmulator) -> None:
    """Handles belong to the session that made them."""
    async with official(emu) as first, official(emu) as second:
        handle = await first.extend("vid-1")
        with pytest.raises(ValueError, match="another session"):
            second.as_completed([handle])


async def test_as_completed_through_the_list_and_through_queries_agree() -> None:
    """The same batch completes through list pages and through per-task queries."""
    for list_mode in ("ok", "404"):
        async with (
            KlingEmulator(list_mode=list_mode, polls_to_start=2, polls_to_finish=2) as emulator,
            gateway(emulator) as session,
        ):
            handles = [await session.extend(f"vid-{n}") for n in range(30)]
            done = [task.task_id async for task in session.as_completed(handles)]
        assert sorted(h.task_id for h in handles) == sorted(done)
        assert (list_mode == "ok") == (emulator.count("query") == 0)


# -- extend_many -----------------------------------------------------------------------------------


async def test_extend_many_keeps_every_handle_whatever_else_fails(emu: KlingEmulator) -> None:
    """Results come in input order: a handle, or the error for that request alone."""
    emu.forget_video("expired")
    requests = [ExtendRequest(video_id=v) for v in ("vid-1", "expired", "vid-2")]
    async with official(emu) as session:
        results = await session.extend_many(requests)

    first, failed, last = results
    assert isinstance(first, TaskHandle)
    assert isinstance(last, TaskHandle)
    assert isinstance(failed, NotFoundError)
    assert 2 == len(emu.tasks)


async def test_extend_many_timeout_sends_nothing_more_and_says_so() -> None:
    """Creates still waiting for a 1303 slot at the timeout get SubmitTimeoutError."""
    policy = RetryPolicy(first_delay=5, task_slot_delay=5, jitter=0)
    async with (
        KlingEmulator(auto_advance=False, max_running=1) as emulator,
        official(emulator, retry_policy=policy) as session,
    ):
        results = await session.extend_many(
            [ExtendRequest(video_id=f"vid-{n}") for n in range(4)], timeout=0.2
        )

    handles = [r for r in results if isinstance(r, TaskHandle)]
    timed_out = [r for r in results if isinstance(r, SubmitTimeoutError)]
    assert (1, 3) == (len(handles), len(timed_out))
    assert 1 == len(emulator.tasks)
    assert all(isinstance(e.last_error, KlingError) for e in timed_out)


async def test_extend_many_checks_every_request_before_sending(emu: KlingEmulator) -> None:
    """A value that is not an ExtendRequest is a TypeError and nothing is sent."""
    async with official(emu) as session:
        with pytest.raises(TypeError, match=r"requests\[1\]"):
            await session.extend_many([ExtendRequest(video_id="v"), "v2"])  # type: ignore[list-item]
    assert 0 == emu.count("create")


# -- the session-wide pace -------------------------------------------------------------------------


async def test_a_1302_slows_the_whole_session() -> None:
    """One wait's 1302 turns the session's pace on: every request then takes a token."""
    policy = RetryPolicy(first_delay=0.01, max_delay=0.02, jitter=0)
    async with (
        KlingEmulator(polls_to_start=2, polls_to_finish=2) as emulator,
        gateway(emulator, retry_policy=policy, list_refresh=False) as session,
    ):
        handles = [await session.extend(f"vid-{n}") for n in range(10)]
        assert session.statistics().rate_limit is None
        emulator.inject(Fault.rate_limited(1302), route="query", times=5)
        with anyio.fail_after(30):
            await _gather_waits(handles)
        stats = session.statistics()

    assert stats.rate_limit is not None
    assert all(h.done for h in handles)
    assert emulator.count("query") <= 10 * 5 + 5  # the 1302s were retried, not stormed


async def test_a_wait_on_a_fresh_task_does_not_poll_at_once(emu: KlingEmulator) -> None:
    """The schedule knows a task just made is not done: its first poll waits for first_delay."""
    async with official(emu, poll_policy=PollPolicy(first_delay=30)) as session:
        handle = await session.extend("vid-1")
        with contextlib.suppress(WaitTimeoutError):
            await handle.wait(timeout=0.05)
    assert 0 == emu.count("query")


async def test_asyncio_gather_of_waits_works_with_coalescing(emu: KlingEmulator) -> None:
    """Plain asyncio.gather over handles (the common batch idiom) completes every task."""
    async with official(emu) as session:
        handles = [await session.extend(f"vid-{n}") for n in range(20)]
        tasks = await asyncio.gather(*handles)
    assert all(task.status is TaskStatus.SUCCEED for task in tasks)
