"""max_parallel_tasks in one process: creates wait at the gate before they are sent, so the
account's parallel-task limit is never hit by the session itself (no 1303), and a 1303 from
elsewhere still queues the create."""

from __future__ import annotations

import anyio
import pytest

from kling_async import ExtendRequest, PollPolicy, RetryPolicy, SubmitTimeoutError
from kling_async.testing import Fault, KlingEmulator

from .helpers import official

pytestmark = pytest.mark.anyio

LIMIT = 4


def refusals(emulator: KlingEmulator) -> int:
    """Creates the emulator refused with 1303 (HTTP 429)."""
    return sum(1 for r in emulator.requests if r.route == "create" and r.status == 429)


async def extend_and_wait(emulator: KlingEmulator, count: int, limit: int | None) -> list[str]:
    """``count`` extends side by side, each waited to its end; their task ids."""
    made: list[str] = []
    async with official(
        emulator,
        max_parallel_tasks=limit,
        poll_policy=PollPolicy.instant(),
        retry_policy=RetryPolicy(),  # a busy account: the default 1303 waits
    ) as session:

        async def one(index: int) -> None:
            handle = await session.extend(video_id=f"video-{index}", prompt="p")
            task = await handle.wait(timeout=60)
            made.append(task.task_id)

        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(one, index)
    return made


async def test_a_set_limit_sends_no_create_the_account_would_refuse() -> None:
    """3N extends at once under a limit of N: every task is made, and no create meets 1303."""
    async with KlingEmulator(max_running=LIMIT) as emulator:
        made = await extend_and_wait(emulator, 3 * LIMIT, LIMIT)
        assert 0 == refusals(emulator)
        assert 3 * LIMIT == len(set(made)) == emulator.count("create") == len(emulator.tasks)


async def test_without_a_limit_the_same_creates_meet_1303_and_still_all_succeed() -> None:
    """The control: without max_parallel_tasks one process behaves as before (1303s, each
    queued until a task finishes), so the test above measures the gate."""
    async with KlingEmulator(max_running=LIMIT) as emulator:
        made = await extend_and_wait(emulator, 3 * LIMIT, None)
        assert refusals(emulator) > 0
        assert 3 * LIMIT == len(set(made)) == len(emulator.tasks)


async def test_a_1303_from_elsewhere_still_queues_the_create() -> None:
    """Another program on the account: a create under the limit meets 1303 anyway, waits,
    and is made once a slot frees; its slot went back to the gate meanwhile."""
    async with KlingEmulator(max_running=LIMIT) as emulator:
        emulator.inject(Fault.rate_limited(1303), route="create", times=2)
        made = await extend_and_wait(emulator, 2, LIMIT)
        assert 2 == refusals(emulator)
        assert 2 == len(made) == len(emulator.tasks)


async def test_a_create_waiting_at_a_full_gate_times_out_unsent() -> None:
    """A create whose deadline passes while the gate is full raises SubmitTimeoutError and
    sends nothing; the slots held are the limit's."""
    async with (
        KlingEmulator(auto_advance=False) as emulator,
        official(emulator, max_parallel_tasks=1) as session,
    ):
        await session.extend(video_id="video-1", prompt="p")
        [outcome] = await session.extend_many(
            [ExtendRequest(video_id="video-2", prompt="p")], timeout=0.2
        )
        assert isinstance(outcome, SubmitTimeoutError)
        assert 1 == emulator.count("create")
