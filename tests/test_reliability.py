"""Reliability against the emulator: retries and budgets, limits, tokens, timeouts, bad bodies."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import json
import logging
import re
import socket
import time

import aiohttp
import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kling_async import (
    AmbiguousCreateError,
    AuthenticationError,
    KlingError,
    KlingSession,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    RetryAfterTooLongError,
    RetryPolicy,
    ServerError,
    SessionClosedError,
    TaskLimitError,
    TaskStatus,
    TransportError,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

pytestmark = pytest.mark.anyio


async def test_query_retries_stop_at_the_attempt_budget(emu: KlingEmulator) -> None:
    """Transient failures are retried up to `attempts` tries, then the last error is raised."""
    async with official(emu, retry_policy=RetryPolicy.instant(attempts=3)) as session:
        handle = await session.extend("vid-1")
        emu.inject(Fault.http(500), route="query", times=10)

        with pytest.raises(ServerError) as caught:
            await handle.poll()

    assert 3 == emu.count("query")
    assert (500, 5000, handle.task_id) == (
        caught.value.status,
        caught.value.code,
        caught.value.task_id,
    )
    assert 2 == session.statistics().retries


async def test_query_retries_stop_at_the_time_budget(emu: KlingEmulator) -> None:
    """No retry is scheduled past `total_time`, whatever attempts remain."""
    policy = RetryPolicy(attempts=10, first_delay=0.05, jitter=0, total_time=0.2)
    async with official(emu, retry_policy=policy) as session:
        handle = await session.extend("vid-1")
        emu.inject(Fault.http(503), route="query", times=10)

        with pytest.raises(ServerError):
            await handle.poll()

    assert 3 == emu.count("query")  # waits 0.05 + 0.1; a third (0.2) would end past 0.2 s


async def test_retry_after_in_seconds_is_honoured(emu: KlingEmulator) -> None:
    """A 429 with Retry-After: 1 waits a second before the retry, not the shorter backoff."""
    policy = RetryPolicy(first_delay=0.0, max_delay=0.0, jitter=0)
    async with official(emu, retry_policy=policy) as session:
        handle = await session.extend("vid-1")
        emu.inject(Fault.rate_limited(1302, retry_after=1), route="query")

        started = time.monotonic()
        await handle.poll()

    assert time.monotonic() - started >= 0.95
    assert 2 == emu.count("query")


async def test_retry_after_as_an_http_date_is_honoured(emu: KlingEmulator) -> None:
    """The HTTP-date form counts from now; a date already past means no wait."""
    policy = RetryPolicy(first_delay=0.0, max_delay=0.0, jitter=0)
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    async with official(emu, retry_policy=policy) as session:
        handle = await session.extend("vid-1")
        emu.inject(Fault.rate_limited(1302, retry_after=past), route="query")

        started = time.monotonic()
        await handle.poll()

    assert time.monotonic() - started < 0.5
    assert 2 == emu.count("query")


async def test_a_retry_after_over_the_cap_fails_at_once_and_says_so(emu: KlingEmulator) -> None:
    """A wait longer than retry_after_cap raises RetryAfterTooLongError naming both numbers."""
    async with official(emu, retry_policy=RetryPolicy.instant(retry_after_cap=30)) as session:
        emu.inject(Fault.rate_limited(1302, retry_after=120), route="create")

        with pytest.raises(RetryAfterTooLongError) as caught:
            await session.extend("vid-1")

    assert (120, 30) == (caught.value.retry_after, caught.value.cap)
    assert "120" in str(caught.value)
    assert isinstance(caught.value.__cause__, RateLimitError)
    assert 1 == emu.count("create")


async def test_twenty_creates_share_three_task_slots() -> None:
    """With 3 running tasks allowed, 20 concurrent extends all get created, none twice."""
    async with KlingEmulator(max_running=3) as emulator, official(emulator) as session:
        finished: list[str] = []

        async def extend_and_wait(n: int) -> None:
            handle = await session.extend(f"vid-{n}")
            finished.append((await handle).task_id)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for n in range(20):
                    group.start_soon(extend_and_wait, n)

    assert 20 == len(set(finished)) == len(emulator.tasks)
    assert {f"vid-{n}" for n in range(20)} == {t.video_id for t in emulator.tasks.values()}
    refused = [r for r in emulator.requests if r.route == "create" and r.status == 429]
    assert refused  # the limit was really hit
    assert 20 + len(refused) == emulator.count("create")


async def test_waiting_for_a_task_slot_is_bounded() -> None:
    """When no slot frees within task_slot_timeout, the create raises TaskLimitError."""
    policy = RetryPolicy.instant(task_slot_timeout=0.05)
    async with (
        KlingEmulator(max_running=1, auto_advance=False) as emulator,
        official(emulator, retry_policy=policy) as session,
    ):
        await session.extend("vid-1")

        with pytest.raises(TaskLimitError) as caught:
            await session.extend("vid-2")

    assert (429, 1303) == (caught.value.status, caught.value.code)
    assert 1 == len(emulator.tasks)


async def test_a_thousand_concurrent_extends_complete(emu: KlingEmulator) -> None:
    """1,000 extends started at once with asyncio.gather: no pool timeouts, no errors."""
    async with official(emu, max_in_flight=16) as session:
        handles = await asyncio.gather(*(session.extend(f"vid-{n}") for n in range(1000)))
        stats = session.statistics()

    assert 1000 == len({handle.task_id for handle in handles}) == len(emu.tasks)
    assert (1000, 0, 0, 1000) == (
        stats.requests_sent,
        stats.retries,
        stats.in_flight,
        stats.tasks_created,
    )


async def test_the_in_flight_limiter_bounds_requests_on_the_wire(emu: KlingEmulator) -> None:
    """Never more than max_in_flight requests are in flight at once."""
    peak = 0
    async with official(emu, max_in_flight=4) as session:

        async def extend(n: int) -> None:
            nonlocal peak
            peak = max(peak, session.statistics().in_flight)
            await session.extend(f"vid-{n}")
            peak = max(peak, session.statistics().in_flight)

        emu.inject(Fault.delay(0.02), route="create", times=40)
        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(extend, n)

    assert 1 <= peak <= 4


async def test_an_expired_token_is_resigned_once_then_reported(emu: KlingEmulator) -> None:
    """When the token is refused as expired again, the session re-signs once, then raises."""
    emu.inject(Fault.http(401, 1004), route="query", times=2)
    async with official(emu) as session:
        with pytest.raises(AuthenticationError) as caught:
            await session.get_task("123")

    assert (401, 1004) == (caught.value.status, caught.value.code)
    assert 2 == emu.count("query")


@pytest.mark.parametrize("skew", [7200.0, -300.0])
async def test_a_token_refused_for_a_skewed_clock_is_signed_on_the_servers_clock(
    emu: KlingEmulator, skew: float
) -> None:
    """The server's clock is two hours ahead (every token expired, 1004) or five minutes
    behind (not yet valid, 1003): the refusal's Date tells the session the server's time,
    and the token signed again on it is accepted."""
    emu.clock = lambda: time.time() + skew
    async with official(emu) as session:
        with pytest.raises(NotFoundError):  # the token was accepted: task 123 does not exist
            await session.get_task("123")
        task = await (await session.extend("vid-1")).poll()

    assert 3 == emu.count("query")
    assert "vid-1" == (task.parent_video.id if task.parent_video else None)


async def test_concurrent_requests_share_one_token(emu: KlingEmulator) -> None:
    """One JWT serves every concurrent request: it is signed once, not per request."""
    async with official(emu) as session:
        handles = await asyncio.gather(*(session.extend(f"vid-{n}") for n in range(50)))
        await asyncio.gather(*(handle.poll() for handle in handles))

    tokens = {request.headers["Authorization"] for request in emu.requests}
    assert 1 == len(tokens)
    assert 1 == session._config.auth.signed  # type: ignore[union-attr]  # a JWT signer here


async def test_an_expired_token_is_replaced_by_one_fresh_signature(emu: KlingEmulator) -> None:
    """On 1004 the session signs a new token once for all, then carries on."""
    async with official(emu) as session:
        handle = await session.extend("vid-1")
        emu.inject(Fault.http(401, 1004), route="query")
        await asyncio.gather(handle.poll(), handle.poll())

    assert 2 == session._config.auth.signed  # type: ignore[union-attr]  # a JWT signer here


async def test_a_read_timeout_on_a_query_is_retried(emu: KlingEmulator) -> None:
    """A reply slower than read_timeout is abandoned and the query sent again."""
    async with official(emu, read_timeout=0.05) as session:
        handle = await session.extend("vid-1")
        emu.inject(Fault.delay(0.5), route="query")

        task = await handle.poll()

    assert handle.task_id == task.task_id
    assert 2 == emu.count("query")


async def test_a_read_timeout_on_a_create_is_reported_never_resent(emu: KlingEmulator) -> None:
    """A create that times out may still be running on the server: the SDK reports it with
    the external id (no second create), and that id finds the one task it made."""
    async with official(emu, read_timeout=0.05) as session:
        await session.extend("vid-0")  # its reply shows the server keeps external ids
        emu.inject(Fault.delay(0.3), route="create")
        with pytest.raises(AmbiguousCreateError) as caught:
            await session.extend("vid-1")
        await anyio.sleep(0.4)  # let the delayed original reach the server's create logic
        assert caught.value.external_task_id is not None
        task = await session.get_task(caught.value.external_task_id)

    assert "vid-1" == emu.tasks[task.task_id].video_id
    assert (2, 2) == (emu.count("create"), len(emu.tasks))


async def test_a_refused_connection_is_retried_then_reported() -> None:
    """Nothing listens: the create certainly made no task, is retried, then TransportError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with official(
        _FakeEmulator(f"http://127.0.0.1:{port}"),
        retry_policy=RetryPolicy.instant(attempts=3),
    ) as session:
        with pytest.raises(TransportError) as caught:
            await session.extend("vid-1")

    assert not caught.value.sent
    assert 3 == session.statistics().requests_sent


async def test_bodies_over_the_size_cap_are_refused(emu: KlingEmulator) -> None:
    """JSON bodies are read with a cap; a larger one is a ResponseDecodeError."""
    async with official(emu, max_response_bytes=1024) as session:
        handle = await session.extend("vid-1")
        huge = b'{"code": 0, "data": {"task_id": "' + b"x" * 4096 + b'"}}'
        emu.inject(Fault.raw(200, huge), route="query", times=10)

        with pytest.raises(ResponseDecodeError, match="larger than 1024"):
            await handle.poll()


async def test_logs_carry_the_facts_and_never_a_secret(
    emu: KlingEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG logs name method, path, status, attempt, code; never keys or tokens."""
    caplog.set_level(logging.DEBUG, logger="kling_async")
    async with official(emu) as session, gateway(emu) as gateway_session:
        emu.inject(Fault.http(500), route="query")
        emu.inject(Fault.http(401, 1004), route="query")
        handle = await session.extend("vid-1")
        await handle.wait()
        await (await gateway_session.extend("vid-2")).wait()
        with pytest.raises(KlingError):
            await session.get_task("missing")

    tokens = {r.headers.get("Authorization", "").removeprefix("Bearer ") for r in emu.requests}
    secrets = {emu.secret_key, emu.api_key, *tokens} - {""}
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert f"GET {emu.base_url}/v1/videos/video-extend/" in text  # the full URL
    assert f"task_id={handle.task_id}" in text
    assert re.search(r"request_id=[0-9a-f-]{36}", text)
    assert "attempt 2" in text
    assert "code=1004" in text
    for secret in secrets:
        assert secret not in text


async def test_waits_pending_counts_live_waits() -> None:
    """statistics().waits_pending reflects waits in progress."""
    async with KlingEmulator(auto_advance=False) as emulator, official(emulator) as session:
        handle = await session.extend("vid-1")
        seen: list[int] = []
        async with anyio.create_task_group() as group:
            group.start_soon(handle.wait)
            while not seen or seen[-1] == 0:
                await anyio.sleep(0)
                seen.append(session.statistics().waits_pending)
            emulator.set_status(handle.task_id, "succeed")

        assert 1 == seen[-1]
        assert 0 == session.statistics().waits_pending
        assert TaskStatus.SUCCEED is handle.status


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def _containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12), children, max_size=5
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    _containers,
    max_leaves=20,
)
TASKISH = st.fixed_dictionaries(
    {"task_id": st.one_of(st.text(max_size=20), st.integers(), st.none())},
    optional={
        "task_status": JSON | st.sampled_from(["submitted", "succeed", "failed", "weird"]),
        "task_status_msg": JSON,
        "created_at": JSON | st.integers(),
        "task_info": JSON | st.fixed_dictionaries({"parent_video": JSON}),
        "task_result": JSON | st.fixed_dictionaries({"videos": st.lists(JSON, max_size=3)}),
    },
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON.map(_dumps),
    st.fixed_dictionaries(
        {"code": st.one_of(st.integers(-1, 6000), st.text(max_size=8)), "data": TASKISH | JSON},
        optional={"message": JSON, "request_id": JSON},
    ).map(_dumps),
    st.text(max_size=100_000).map(lambda text: _dumps({"code": 0, "message": text})),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, status=st.sampled_from([200, 400, 404, 429, 500, 502]))
async def test_any_reply_on_any_route_raises_only_kling_errors(body: bytes, status: int) -> None:
    """Whatever comes back, a public call returns or raises a KlingError, never anything else."""
    async with (
        KlingEmulator() as emulator,
        official(emulator, retry_policy=RetryPolicy.instant(attempts=2)) as session,
    ):
        handle = await session.extend("vid-0")
        for route in ("create", "query", "list"):
            emulator.inject(Fault.raw(status, body), route=route)
        calls = [
            lambda: session.extend("vid-1"),
            handle.poll,
            lambda: _first_page(session),
        ]
        for call in calls:
            with contextlib.suppress(KlingError):
                await call()
        made = [task.video_id for task in emulator.tasks.values()]
        assert ["vid-0"] == made[:1]
        assert made.count("vid-1") <= 1  # never paid twice


async def _first_page(session: object) -> list[object]:
    return [task async for task in session.list_tasks(max_pages=1)]  # type: ignore[attr-defined]


class _FakeEmulator:
    """Credentials and a base URL where nothing listens."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.access_key = "ak"
        self.secret_key = "sk"


async def test_closing_the_session_under_a_create_on_the_wire_reports_it(
    emu: KlingEmulator,
) -> None:
    """aclose() aborts a create in flight; the caller learns it may have made a task."""
    session = official(emu)
    async with session:
        emu.inject(Fault.delay(0.3), route="create")
        caught: list[AmbiguousCreateError] = []

        async def create() -> None:
            with pytest.raises(AmbiguousCreateError) as error:
                await session.extend("vid-1")
            caught.append(error.value)

        async with anyio.create_task_group() as group:
            group.start_soon(create)
            while emu.count("create") < 1:
                await anyio.sleep(0.001)
            await session.aclose()
        await anyio.sleep(0.4)  # the server finishes the create it received

    assert caught[0].external_task_id is not None
    assert [caught[0].external_task_id] == [t.external_task_id for t in emu.tasks.values()]


async def test_closing_fails_a_query_in_flight_on_a_borrowed_http_session_promptly(
    emu: KlingEmulator,
) -> None:
    """Even on a borrowed aiohttp session, a query on the wire ends at aclose(), not later."""
    async with aiohttp.ClientSession() as http:
        session = official(emu, http_session=http)
        async with session:
            handle = await session.extend("vid-1")
            emu.inject(Fault.delay(5), route="query")
            failures: list[float] = []

            async def poll() -> None:
                with pytest.raises(SessionClosedError):
                    await handle.poll()
                failures.append(time.monotonic())

            async with anyio.create_task_group() as group:
                group.start_soon(poll)
                while emu.count("query") < 1:
                    await anyio.sleep(0.001)
                closed_at = time.monotonic()
                await session.aclose()

        assert failures[0] - closed_at < 1
        assert not http.closed


async def test_a_1303_retry_after_over_the_cap_fails_at_once() -> None:
    """A parallel-task refusal asking for a wait over the cap is not waited out."""
    policy = RetryPolicy.instant(retry_after_cap=30)
    async with KlingEmulator() as emulator, official(emulator, retry_policy=policy) as session:
        emulator.inject(Fault.rate_limited(1303, retry_after=120), route="create")
        with pytest.raises(RetryAfterTooLongError) as caught:
            await session.extend("vid-1")

    assert isinstance(caught.value.__cause__, TaskLimitError)
    assert (1, 0) == (emulator.count("create"), len(emulator.tasks))


async def test_waiting_for_a_task_slot_leaves_the_retry_budget_intact() -> None:
    """Time spent waiting for a 1303 slot does not count against total_time."""
    policy = RetryPolicy(first_delay=0.01, task_slot_delay=0.02, total_time=0.05, jitter=0)
    async with KlingEmulator() as emulator, official(emulator, retry_policy=policy) as session:
        emulator.inject(Fault.rate_limited(1303), route="create", times=5)
        emulator.inject(Fault.rate_limited(1302), route="create")

        handle = await session.extend("vid-1")

    assert [handle.task_id] == list(emulator.tasks)
    assert 7 == emulator.count("create")


async def test_a_borrowed_session_raising_for_status_changes_nothing(emu: KlingEmulator) -> None:
    """A lent aiohttp session with raise_for_status=True: errors are still read as Kling's,
    and nothing in the exception chain shows the key."""
    async with (
        aiohttp.ClientSession(raise_for_status=True) as http,
        KlingSession(emu.api_key, base_url=emu.gateway_url, http_session=http) as session,
    ):
        with pytest.raises(NotFoundError) as caught:
            await session.get_task("nope")
        emu.inject(Fault.rate_limited(1302), route="create")
        await session.extend("vid-1")

    assert 1 == len(emu.tasks)
    assert emu.api_key not in _chain_text(caught.value)


async def test_no_secret_in_any_error_or_its_causes(emu: KlingEmulator) -> None:
    """str() and repr() of errors and of every cause they chain carry no key or token."""
    faults = [
        Fault.http(500),
        Fault.html(502),
        Fault.drop(),
        Fault.truncated(),
        Fault.http(401, 1002),
        Fault.raw(200, b'{"code": 0, "data": {"task_status": 1}}'),
    ]
    errors: list[BaseException] = []
    async with official(emu, retry_policy=RetryPolicy.instant(attempts=1)) as session:
        handle = await session.extend("vid-0")
        for fault in faults:
            emu.inject(fault, route="query", times=2)
            try:
                await handle.poll()
            except KlingError as error:
                errors.append(error)
    tokens = {r.headers["Authorization"].removeprefix("Bearer ") for r in emu.requests}

    assert len(errors) == len(faults)
    for error in errors:
        text = _chain_text(error)
        for secret in (emu.secret_key, *tokens):
            assert secret not in text


async def test_a_compressed_body_is_capped_after_decompression(emu: KlingEmulator) -> None:
    """A small gzip body that unpacks past max_response_bytes is refused."""
    body = gzip.compress(b'{"code": 0, "data": {"pad": "' + b"x" * 100_000 + b'"}}')
    async with official(emu, max_response_bytes=8192) as session:
        handle = await session.extend("vid-1")
        emu.inject(
            Fault.raw(200, body, headers={"Content-Encoding": "gzip"}), route="query", times=10
        )
        with pytest.raises(ResponseDecodeError, match="larger than 8192"):
            await handle.poll()

    assert len(body) < 8192


async def test_a_task_listed_before_the_create_was_sent_is_not_taken_for_it() -> None:
    """Reconciling through the list never adopts another worker's earlier task: older than
    the send by more than the server clock's uncertainty (learned from A's own create)."""
    async with KlingEmulator() as emulator, gateway(emulator) as a, gateway(emulator) as b:
        emulator.clock = lambda: time.time() - 300  # the server's clock is 5 minutes behind
        own = await a.extend("vid-0")  # its created_at tells A the server's clock to ~1 ms
        other = await b.extend("vid-1", prompt="zoom out")
        await anyio.sleep(0.05)  # B's task is older than A's create by the server's clock
        emulator.inject(Fault.drop(), route="create")
        with pytest.raises(AmbiguousCreateError) as caught:
            await a.extend("vid-1", prompt="pan left")

    assert [other.task_id] == [task.task_id for task in caught.value.candidates]
    assert [own.task_id, other.task_id] == list(emulator.tasks)


async def test_a_lost_create_is_found_in_the_list_with_the_server_clock_minutes_off() -> None:
    """The reply to a create is lost; the server's clock is 5 minutes behind this machine's
    (then ahead): the look-up places the send on the server's clock and finds the task."""
    for skew in (-300.0, 300.0):
        async with KlingEmulator() as emulator, gateway(emulator) as session:
            emulator.clock = lambda skew=skew: time.time() + skew
            emulator.inject(Fault.reply_lost(), route="create")
            handle = await session.extend("vid-1")

        assert [handle.task_id] == list(emulator.tasks)


def test_credentials_with_control_characters_are_refused() -> None:
    """A key that would break (or smuggle) a header is refused when the session is made."""
    with pytest.raises(ValueError, match="control characters"):
        KlingSession("key\r\nX-Evil: 1", base_url="https://gw.example.com/kling")


def _chain_text(error: BaseException) -> str:
    texts = []
    seen: BaseException | None = error
    while seen is not None:
        texts += [str(seen), repr(seen), repr(getattr(seen, "__dict__", ""))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


async def test_closing_ends_a_create_on_the_wire_and_calls_queued_behind_it(
    emu: KlingEmulator,
) -> None:
    """On a borrowed aiohttp session with one slot, aclose() ends the shielded create on the
    wire (reported as ambiguous) and the query queued behind it, at once."""
    async with aiohttp.ClientSession() as http:
        session = official(emu, http_session=http, max_in_flight=1)
        async with session:
            emu.inject(Fault.delay(5), route="create")
            outcomes: dict[str, float] = {}

            async def create() -> None:
                with pytest.raises(AmbiguousCreateError):
                    await session.extend("vid-1")
                outcomes["create"] = time.monotonic()

            async def query() -> None:
                with pytest.raises(SessionClosedError):
                    await session.get_task("123")
                outcomes["query"] = time.monotonic()

            async with anyio.create_task_group() as group:
                group.start_soon(create)
                while emu.count("create") < 1:
                    await anyio.sleep(0.001)
                group.start_soon(query)
                await anyio.sleep(0.01)
                closed_at = time.monotonic()
                await session.aclose()

    assert max(outcomes.values()) - closed_at < 1
    assert 0 == emu.count("query")
