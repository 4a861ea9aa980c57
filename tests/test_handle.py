"""TaskHandle against the emulator: poll, wait_started, wait, await, watch, bounds, resuming."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import anyio
import pytest

from kling_async import (
    KlingSession,
    PollPolicy,
    SessionClosedError,
    TaskFailedError,
    TaskStatus,
    WaitTimeoutError,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import official

pytestmark = pytest.mark.anyio


async def test_awaiting_a_handle_returns_the_finished_task(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """await handle is wait(): it polls until succeed and decodes the result video."""
    handle = await session.extend("vid-1")

    task = await handle

    assert TaskStatus.SUCCEED is task.status
    assert task.done
    assert handle.done
    assert task is handle.last
    assert task.video is not None
    assert isinstance(task.video.duration, float)
    assert task.video.url.startswith(emu.media_url)
    assert task.created_at is not None
    assert dt.timezone.utc == task.created_at.tzinfo


async def test_poll_sends_exactly_one_query(emu: KlingEmulator, session: KlingSession) -> None:
    """poll() is one query and updates the handle's last state."""
    handle = await session.extend("vid-1")

    first = await handle.poll()
    second = await handle.poll()

    assert [TaskStatus.SUBMITTED, TaskStatus.PROCESSING] == [first.status, second.status]
    assert TaskStatus.PROCESSING is handle.status
    assert 2 == emu.count("query")


async def test_wait_started_returns_once_the_task_left_submitted(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """wait_started() stops at processing without waiting for the end."""
    handle = await session.extend("vid-1")

    task = await handle.wait_started()

    assert TaskStatus.PROCESSING is task.status
    assert not handle.done


async def test_a_failed_task_raises_task_failed_error_with_its_reason(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """wait() raises TaskFailedError carrying the task and task_status_msg."""
    emu.fail_video("risky", "content risk control")
    handle = await session.extend("risky")

    with pytest.raises(TaskFailedError) as caught:
        await handle.wait()

    assert "content risk control" == caught.value.reason
    assert TaskStatus.FAILED is caught.value.task.status
    assert handle.task_id == caught.value.task_id
    assert handle.done


async def test_watch_yields_each_status_change_then_ends(session: KlingSession) -> None:
    """watch() yields once per status, not once per poll, and stops when done."""
    handle = await session.extend("vid-1")

    statuses = [task.status async for task in handle.watch()]

    assert [TaskStatus.SUBMITTED, TaskStatus.PROCESSING, TaskStatus.SUCCEED] == statuses


async def test_watch_of_a_finished_handle_yields_its_last_state_without_io(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """A handle that already saw the end does not query again."""
    handle = await session.extend("vid-1")
    await handle.wait()
    queries = emu.count("query")

    statuses = [task.status async for task in handle.watch()]
    again = await handle.wait()

    assert [TaskStatus.SUCCEED] == statuses
    assert TaskStatus.SUCCEED is again.status
    assert queries == emu.count("query")


async def test_an_unknown_status_is_kept_and_the_wait_goes_on() -> None:
    """An unknown status keeps the wait going until a known final status arrives."""
    async with KlingEmulator(auto_advance=False) as emulator, official(emulator) as manual:
        handle = await manual.extend("vid-1")
        emulator.set_status(handle.task_id, "queueing")

        task = await handle.poll()

        assert "queueing" == task.status.value
        assert not task.status.known
        assert not handle.done
        emulator.set_status(handle.task_id, "succeed")
        assert TaskStatus.SUCCEED is (await handle.wait()).status


async def test_a_wait_timeout_names_the_task_and_leaves_the_handle_usable() -> None:
    """wait(timeout=) raises WaitTimeoutError; the same handle can wait again later."""
    async with KlingEmulator(auto_advance=False) as emulator, official(emulator) as session:
        handle = await session.extend("vid-1")

        with pytest.raises(WaitTimeoutError) as caught:
            await handle.wait(timeout=0.01)

        assert handle.task_id == caught.value.task_id
        assert handle.task_id in str(caught.value)
        assert isinstance(caught.value, TimeoutError)
        assert emulator.tasks[handle.task_id].status == "submitted"  # nothing cancelled remotely
        emulator.set_status(handle.task_id, "succeed")
        assert TaskStatus.SUCCEED is (await handle.wait(timeout=5)).status


@pytest.mark.parametrize("bound", ["asyncio.wait_for", "anyio.move_on_after"])
async def test_the_callers_own_scope_bounds_a_wait(bound: str) -> None:
    """Cancelling a wait from outside loses nothing and leaves no task behind."""
    async with KlingEmulator(auto_advance=False) as emulator, official(emulator) as session:
        handle = await session.extend("vid-1")
        before = _client_tasks()

        if bound == "asyncio.wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(handle.wait(), 0.01)
        else:
            with anyio.move_on_after(0.01):
                await handle.wait()

        assert before == _client_tasks()
        assert 0 == session.statistics().waits_pending
        emulator.set_status(handle.task_id, "succeed")
        assert TaskStatus.SUCCEED is (await handle).status


async def test_a_stored_task_id_resumes_in_another_session(emu: KlingEmulator) -> None:
    """session.task(id) makes a handle without I/O; waiting on it works as before."""
    async with official(emu) as first:
        task_id = (await first.extend("vid-1")).task_id
    queries = emu.count("query")

    async with official(emu) as second:
        handle = second.task(task_id)
        assert handle.status is None
        assert handle.last is None
        assert queries == emu.count("query")
        task = await handle

    assert TaskStatus.SUCCEED is task.status


async def test_closing_the_session_fails_pending_waits_promptly() -> None:
    """aclose() while waits are pending makes them raise SessionClosedError."""
    async with KlingEmulator(auto_advance=False) as emulator:
        session = official(emulator)
        async with session:
            handles = [await session.extend(f"vid-{n}") for n in range(3)]
            errors: list[BaseException] = []

            async def waiter(index: int) -> None:
                try:
                    await handles[index].wait()
                except SessionClosedError as error:
                    errors.append(error)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as group:
                    for index in range(3):
                        group.start_soon(waiter, index)
                    while session.statistics().waits_pending < 3:
                        await anyio.sleep(0)
                    await session.aclose()

        assert 3 == len(errors)
        assert 0 == session.statistics().waits_pending


def _client_tasks() -> int:
    """Tasks on the loop, less the emulator's request handlers (they outlive a cancel a bit)."""
    return sum(
        not getattr(task.get_coro(), "__qualname__", "").startswith("RequestHandler.")
        for task in asyncio.all_tasks()
    )


async def test_closing_wakes_a_wait_that_sleeps_between_polls() -> None:
    """A wait sleeping until its next poll fails at once when the session closes."""
    async with KlingEmulator(auto_advance=False) as emulator:
        session = official(emulator, poll_policy=PollPolicy(first_delay=30, jitter=0))
        async with session:
            handle = await session.extend("vid-1")
            caught: list[BaseException] = []

            async def waiter() -> None:
                with pytest.raises(SessionClosedError) as error:
                    await handle.wait()
                caught.append(error.value)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as group:
                    group.start_soon(waiter)
                    while session.statistics().waits_pending < 1:
                        await anyio.sleep(0)
                    await anyio.sleep(0.01)  # the waiter is now asleep for 30 s
                    await session.aclose()

        assert 1 == len(caught)
        assert 0 == emulator.count("query")  # a fresh task's first poll waits for first_delay


async def test_closing_a_session_with_a_borrowed_http_session_fails_waits() -> None:
    """With a borrowed aiohttp session, closing still ends pending waits (and leaves it open)."""
    async with KlingEmulator(auto_advance=False) as emulator, aiohttp.ClientSession() as http:
        session = official(emulator, http_session=http)
        async with session:
            handle = await session.extend("vid-1")
            with anyio.fail_after(5):
                async with anyio.create_task_group() as group:

                    async def waiter() -> None:
                        with pytest.raises(SessionClosedError):
                            await handle.wait()

                    group.start_soon(waiter)
                    while emulator.count("query") < 3:
                        await anyio.sleep(0)
                    await session.aclose()
        assert not http.closed


async def test_a_create_cancelled_in_flight_still_returns_its_handle() -> None:
    """Once a paid create is on the wire, an anyio cancel scope waits for its reply."""
    async with KlingEmulator() as emulator, official(emulator) as session:
        emulator.inject(Fault.delay(0.1), route="create")
        handle = None
        with anyio.move_on_after(0.02):
            handle = await session.extend("vid-1")

        assert handle is not None
        assert [handle.task_id] == list(emulator.tasks)
        assert 1 == session.statistics().tasks_created


async def test_leaving_a_watch_early_leaves_nothing_pending(session: KlingSession) -> None:
    """Breaking out of watch() holds no wait open: nothing is pending between yields."""
    handle = await session.extend("vid-1")

    async for task in handle.watch():
        assert TaskStatus.SUBMITTED is task.status
        break

    assert 0 == session.statistics().waits_pending
