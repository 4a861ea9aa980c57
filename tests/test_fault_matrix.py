"""The fault matrix: every fault the emulator injects, on create and on query, and its outcome.

Each row states what the SDK must do (recover, or which error) and what the server must end
with (how many creates it received, how many tasks exist): a create is never paid twice.
"""

from __future__ import annotations

import anyio
import attrs
import pytest

from kling_async import (
    AmbiguousCreateError,
    ContentPolicyError,
    InvalidRequestError,
    KlingError,
    PermissionDeniedError,
    QuotaExhaustedError,
    ResponseDecodeError,
    TaskStatus,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

pytestmark = pytest.mark.anyio

OK = None  # the call succeeds


@attrs.frozen
class Row:
    fault: Fault
    outcome: type[KlingError] | None
    creates: int  # create requests the server received
    tasks: int  # tasks that exist on the server afterwards
    queries: int = 0  # query requests the server received (query rows)
    times: int = 1  # how many replies in a row get the fault


# A stamped session (access key + secret key): an unknown outcome is looked up by external id.
# An unknown outcome is never resent: "not found" cannot prove that the first create will not
# still make its task, so it is reported (AmbiguousCreateError) rather than risking a second
# paid task; a task that exists is found and its handle returned.
CREATE_ROWS = {
    "429 1302 rate limit: retried": Row(Fault.rate_limited(1302), OK, 2, 1),
    "429 1302 with Retry-After: retried": Row(Fault.rate_limited(1302, retry_after=1), OK, 2, 1),
    "429 1303 task limit: waits for a slot": Row(Fault.rate_limited(1303), OK, 2, 1),
    "429 1101 arrears: not retried": Row(Fault.http(429, 1101), QuotaExhaustedError, 1, 0),
    "429 1102 pack used up: not retried": Row(Fault.http(429, 1102), QuotaExhaustedError, 1, 0),
    "429 1304 IP whitelist: not retried": Row(Fault.http(429, 1304), PermissionDeniedError, 1, 0),
    "400 1301 content safety: not retried": Row(Fault.http(400, 1301), ContentPolicyError, 1, 0),
    "401 1004 expired token: re-signed once": Row(Fault.http(401, 1004), OK, 2, 1),
    "500 5000: looked up, reported": Row(Fault.http(500), AmbiguousCreateError, 1, 0),
    "503 5001 maintenance: retried": Row(Fault.http(503), OK, 2, 1),
    "504 5002 (may still run): reported": Row(Fault.http(504), AmbiguousCreateError, 1, 0),
    "HTML 502 page: reported": Row(Fault.html(502), AmbiguousCreateError, 1, 0),
    "HTML 200 page: reported": Row(Fault.html(200), AmbiguousCreateError, 1, 0),
    "200 with code 1201: not retried": Row(Fault.business(1201), InvalidRequestError, 1, 0),
    "gateway string code at 500: reported": Row(
        Fault.gateway("upstream_error"), AmbiguousCreateError, 1, 0
    ),
    "gateway string code at 429: retried": Row(Fault.gateway("rate_limit", status=429), OK, 2, 1),
    "garbage bytes at 200: reported": Row(Fault.raw(200, b"\x00\xff{"), AmbiguousCreateError, 1, 0),
    "truncated JSON (task made): found": Row(Fault.truncated(), OK, 1, 1),
    "reply lost (task made): found": Row(Fault.reply_lost(), OK, 1, 1),
    "dropped (nothing made): reported": Row(Fault.drop(), AmbiguousCreateError, 1, 0),
    "small delay: fine": Row(Fault.delay(0.01), OK, 1, 1),
}

QUERY_ROWS = {
    "429 1302 rate limit: retried": Row(Fault.rate_limited(1302), OK, 1, 1, 2),
    "429 1302 with Retry-After: retried": Row(Fault.rate_limited(1302, retry_after=1), OK, 1, 1, 2),
    "429 1101 arrears: not retried": Row(Fault.http(429, 1101), QuotaExhaustedError, 1, 1, 1),
    "401 1004 expired token: re-signed once": Row(Fault.http(401, 1004), OK, 1, 1, 2),
    "500 5000: retried": Row(Fault.http(500), OK, 1, 1, 2),
    "503 5001: retried": Row(Fault.http(503), OK, 1, 1, 2),
    "504 5002: retried": Row(Fault.http(504), OK, 1, 1, 2),
    "HTML 502 page: retried": Row(Fault.html(502), OK, 1, 1, 2),
    "HTML 200 page: retried": Row(Fault.html(200), OK, 1, 1, 2),
    "200 with code 1201: not retried": Row(Fault.business(1201), InvalidRequestError, 1, 1, 1),
    "gateway string code at 502: retried": Row(Fault.gateway("bad_gw", status=502), OK, 1, 1, 2),
    "truncated JSON: retried": Row(Fault.truncated(), OK, 1, 1, 2),
    "JSON of the wrong shape: not retried": Row(
        Fault.raw(200, b'{"code": 0, "data": {"task_status": 7}}'), ResponseDecodeError, 1, 1, 1
    ),
    "reply lost: retried": Row(Fault.reply_lost(), OK, 1, 1, 2),
    # aiohttp itself resends a GET once when a reused connection drops; the second drop
    # reaches the SDK, which retries.
    "dropped twice: retried": Row(Fault.drop(), OK, 1, 1, 3, times=2),
    "small delay: fine": Row(Fault.delay(0.01), OK, 1, 1, 1),
}


@pytest.mark.parametrize("row", list(CREATE_ROWS.values()), ids=list(CREATE_ROWS))
async def test_create_fault(row: Row) -> None:
    """A create under each fault ends as the row says, with the stated creates and tasks.

    A first create succeeds before the fault, so the server is known to keep external ids.
    """
    async with KlingEmulator() as emulator, official(emulator) as session:
        first = await session.extend("vid-0")
        emulator.inject(row.fault, route="create")
        if row.outcome is None:
            handle = await session.extend("vid-1")
            assert [first.task_id, handle.task_id] == list(emulator.tasks)
        else:
            with pytest.raises(row.outcome):
                await session.extend("vid-1")
        assert (row.creates, row.tasks) == (emulator.count("create") - 1, len(emulator.tasks) - 1)


@pytest.mark.parametrize(
    ("fault", "outcome", "tasks"),
    [
        (Fault.reply_lost(), None, 1),
        (Fault.truncated(), None, 1),
        (Fault.drop(), AmbiguousCreateError, 0),
        (Fault.http(500), AmbiguousCreateError, 0),
    ],
    ids=["reply lost: found", "truncated: found", "dropped: reported", "500: reported"],
)
async def test_a_first_create_is_found_or_reported(
    fault: Fault, outcome: type[KlingError] | None, tasks: int
) -> None:
    """On a session's first create, too, a task is found (by external id or in the list) or
    the outcome is reported: never resent."""
    async with KlingEmulator() as emulator, official(emulator) as session:
        emulator.inject(fault, route="create")
        if outcome is None:
            handle = await session.extend("vid-1")
            assert [handle.task_id] == list(emulator.tasks)
        else:
            with pytest.raises(AmbiguousCreateError) as caught:
                await session.extend("vid-1")
            assert caught.value.external_task_id is not None
            assert caught.value.external_task_id.startswith("kling-async-")
        assert (1, tasks) == (emulator.count("create"), len(emulator.tasks))


@pytest.mark.parametrize("fault", [Fault.reply_lost(), Fault.drop()], ids=["lost", "dropped"])
async def test_a_gateway_that_drops_external_ids_never_gets_a_second_create(fault: Fault) -> None:
    """A caller's external id through a gateway that ignores it: the look-up finds nothing,
    so the SDK reports the unknown outcome instead of paying for a second task."""
    async with (
        KlingEmulator(accept_external_task_id=False, list_mode="404") as emulator,
        gateway(emulator) as session,
    ):
        await session.extend("vid-0", external_task_id="order-0")  # echoes no external id
        emulator.inject(fault, route="create")
        with pytest.raises(AmbiguousCreateError) as caught:
            await session.extend("vid-1", external_task_id="order-1")

    assert "order-1" == caught.value.external_task_id
    assert 2 == emulator.count("create")


@pytest.mark.parametrize("row", list(QUERY_ROWS.values()), ids=list(QUERY_ROWS))
async def test_query_fault(row: Row) -> None:
    """A query under each fault ends as the row says; a query never creates anything."""
    async with KlingEmulator() as emulator, official(emulator) as session:
        handle = await session.extend("vid-1")
        emulator.inject(row.fault, route="query", times=row.times)
        if row.outcome is None:
            task = await handle.poll()
            assert handle.task_id == task.task_id
        else:
            with pytest.raises(row.outcome):
                await handle.poll()
        assert (row.creates, row.tasks, row.queries) == (
            emulator.count("create"),
            len(emulator.tasks),
            emulator.count("query"),
        )


@pytest.mark.parametrize(
    ("list_mode", "outcome"),
    [("ok", OK), ("404", AmbiguousCreateError), ("html", AmbiguousCreateError)],
)
async def test_a_lost_create_reply_without_stamp_is_found_in_the_list_or_reported(
    list_mode: str, outcome: type[KlingError] | None
) -> None:
    """Through a gateway (no stamp) a lost reply is reconciled by listing, else reported.

    Either way the server holds exactly one task: nothing is resent blindly.
    """
    async with (
        KlingEmulator(list_mode=list_mode) as emulator,
        gateway(emulator) as session,
    ):
        emulator.inject(Fault.reply_lost(), route="create")
        if outcome is None:
            handle = await session.extend("vid-1", prompt="wider")
            assert [handle.task_id] == list(emulator.tasks)
        else:
            with pytest.raises(AmbiguousCreateError) as caught:
                await session.extend("vid-1", prompt="wider")
            error = caught.value
            assert "vid-1" == error.request.video_id
            assert "wider" == error.request.prompt
            assert error.external_task_id is None
            assert error.sent_at.tzinfo is not None
            assert error.__cause__ is not None
            assert "vid-1" in str(error)
        assert (1, 1) == (emulator.count("create"), len(emulator.tasks))


async def test_a_lost_create_reply_with_the_callers_external_id_is_found() -> None:
    """A caller's own external_task_id is sent even through a gateway and used to look up."""
    async with KlingEmulator(list_mode="404") as emulator, gateway(emulator) as session:
        emulator.inject(Fault.reply_lost(), route="create")
        handle = await session.extend("vid-1", external_task_id="order-7")
        task = await handle

    assert TaskStatus.SUCCEED is task.status
    assert (1, 1) == (emulator.count("create"), len(emulator.tasks))


async def test_a_task_with_another_external_id_is_never_taken_for_ours() -> None:
    """Reconciling through the list skips tasks stamped with someone else's external id,
    even one made for the same video right after our create was sent."""
    async with (
        KlingEmulator() as emulator,
        official(emulator) as mine,
        official(emulator) as theirs,
    ):
        await mine.extend("vid-0")
        emulator.inject(Fault.drop(), route="create")  # our create: lost before processing
        emulator.inject(Fault.delay(0.2), route="query")  # our look-up: slow

        async def other_worker() -> None:
            await anyio.sleep(0.05)  # after our create, before our look-up ends
            await theirs.extend("vid-1")

        async with anyio.create_task_group() as group:
            group.start_soon(other_worker)
            with pytest.raises(AmbiguousCreateError) as caught:
                await mine.extend("vid-1")

    assert () == caught.value.candidates
    assert 1 == [task.video_id for task in emulator.tasks.values()].count("vid-1")
