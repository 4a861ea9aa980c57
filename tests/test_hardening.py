"""Regression tests for the defects a hostile server and an impatient user found in 0.1.

Each test names the item of the hardening issue it covers; each failed before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from aiohttp import web

from kling_async import (
    AmbiguousCreateError,
    InvalidArgumentError,
    KlingError,
    KlingSession,
    RetryPolicy,
    SessionClosedError,
    TaskLimitError,
    TaskStatus,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

pytestmark = pytest.mark.anyio

EXTEND = "/v1/videos/video-extend"


# -- a hostile server: plain aiohttp.web on loopback, replies scripted by the test ---------------


@contextlib.asynccontextmanager
async def hostile(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serve ``handler`` for every path on loopback; yield the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def envelope(data: Any, code: int = 0, message: str = "SUCCEED") -> web.Response:
    body = {"code": code, "message": message, "request_id": "req-1", "data": data}
    return web.json_response(body)


def task_object(status: str, updated_at: int, task_id: str = "t-1") -> dict[str, Any]:
    return {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1_700_000_000_000,
        "updated_at": updated_at,
        "task_info": {},
        "task_result": {},
    }


# -- 1. a task is never handed to the wrong extend() -----------------------------------------------


async def test_two_lost_creates_for_one_video_never_share_or_swap_a_task() -> None:
    """Item 1: A's create makes nothing, B's reply is lost: neither is handed B's task blindly."""
    async with KlingEmulator() as emulator, gateway(emulator) as session:
        emulator.inject(Fault.drop(), route="create")  # the first create: nothing made
        emulator.inject(Fault.reply_lost(), route="create")  # the second: made, reply lost
        outcomes: dict[str, object] = {}

        async def extend(prompt: str) -> None:
            try:
                outcomes[prompt] = await session.extend("vid-1", prompt=prompt)
            except KlingError as error:
                outcomes[prompt] = error

        async with anyio.create_task_group() as group:
            group.start_soon(extend, "a")
            group.start_soon(extend, "b")

    (made,) = emulator.tasks.values()
    for prompt, outcome in outcomes.items():
        if isinstance(outcome, AmbiguousCreateError):
            assert [made.task_id] == [task.task_id for task in outcome.candidates]
        else:
            # A handle is only ever the task its own create made (the prompt tells them apart).
            assert prompt == emulator.tasks[outcome.task_id].prompt  # type: ignore[attr-defined]
    handles = [o for o in outcomes.values() if not isinstance(o, KlingError)]
    assert len(handles) == len({h.task_id for h in handles})  # type: ignore[attr-defined]


async def test_a_lost_create_still_finds_its_task_beside_a_successful_one() -> None:
    """Item 1: a task another create of the session made (and got) is never a candidate."""
    async with KlingEmulator() as emulator, gateway(emulator) as session:
        first = await session.extend("vid-1", prompt="first")
        emulator.inject(Fault.reply_lost(), route="create")
        second = await session.extend("vid-1", prompt="second")

    assert "second" == emulator.tasks[second.task_id].prompt
    assert {first.task_id, second.task_id} == set(emulator.tasks)


# -- 2. parsing is linear in the reply's size ----------------------------------------------------


async def test_a_message_full_of_braces_is_parsed_in_linear_time() -> None:
    """Item 2: a 1 MB gateway message of ``{`` parses at once (a regex took minutes)."""
    message = "{" * 1_000_000
    body = json.dumps({"code": "upstream_error", "message": message, "data": None})

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text=body, content_type="application/json")

    async with hostile(handler) as base_url:
        session = KlingSession("key", base_url=base_url, retry_policy=RetryPolicy.instant())
        async with session:
            started = time.perf_counter()
            with pytest.raises(KlingError) as caught:
                await session.get_task("t-1")
            elapsed = time.perf_counter() - started

    assert "upstream_error" == caught.value.gateway_code  # type: ignore[attr-defined]
    assert elapsed < 5  # generous: linear parsing takes milliseconds, the regex minutes


# -- 3. a 1303 slot is freed only by a task seen to finish, one create at a time -------------------


def _slot_policy(timeout: float) -> RetryPolicy:
    # Slot waits end only when a slot frees (or at the slot timeout): nothing else wakes them.
    return RetryPolicy(first_delay=5, task_slot_delay=5, jitter=0, task_slot_timeout=timeout)


async def test_querying_a_long_finished_task_does_not_wake_slot_waits() -> None:
    """Item 3: 20 creates waiting for a slot are not woken by queries of an old finished task."""
    async with KlingEmulator(auto_advance=False, max_running=1) as emulator:
        async with official(emulator) as other:
            old = await other.extend("vid-old")
        emulator.set_status(old.task_id, "succeed")
        async with official(emulator, retry_policy=_slot_policy(0.4)) as session:
            await session.extend("vid-running")  # holds the only slot
            creates_before = emulator.count("create")
            refused: list[BaseException] = []

            async def create(n: int) -> None:
                with pytest.raises(TaskLimitError) as caught:
                    await session.extend(f"vid-{n}")
                refused.append(caught.value)

            async with anyio.create_task_group() as group:
                for n in range(20):
                    group.start_soon(create, n)
                for _ in range(15):
                    await session.get_task(old.task_id)
                    await anyio.sleep(0.02)

    assert 20 == len(refused)
    assert emulator.count("create") - creates_before <= 40  # a try and a last try each


async def test_one_finished_task_lets_one_waiting_create_through() -> None:
    """Item 3: a task seen to change to done releases one waiting create, not all of them."""
    async with KlingEmulator(auto_advance=False, max_running=1) as emulator:
        session = official(emulator, retry_policy=_slot_policy(30))
        async with session:
            running = await session.extend("vid-running")
            closed: list[BaseException] = []

            async def create(n: int) -> None:
                try:
                    await session.extend(f"vid-{n}")
                except SessionClosedError as error:
                    closed.append(error)

            async with anyio.create_task_group() as group:
                for n in range(5):
                    group.start_soon(create, n)
                while emulator.count("create") < 6:  # the running one and five refused
                    await anyio.sleep(0)
                emulator.set_status(running.task_id, "succeed")
                await session.get_task(running.task_id)
                with anyio.fail_after(5):
                    while len(emulator.tasks) < 2:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # had every waiter woken, they would have tried by now
                creates = emulator.count("create")
                await session.aclose()

    assert 7 == creates  # 1 + 5 refused + the one let through
    assert 4 == len(closed)


# -- 4. failures before anything was sent are not "ambiguous" ------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://127.0.0.1:0/kling", "http://[::1"],
)
def test_a_base_url_that_cannot_be_connected_to_is_refused_up_front(url: str) -> None:
    """Item 4: a bad port or host is an InvalidArgumentError in the constructor."""
    with pytest.raises(InvalidArgumentError) as caught:
        KlingSession("key", base_url=url)
    assert "base_url" == caught.value.field


def test_a_session_used_from_another_event_loop_fails_before_sending() -> None:
    """Item 4: a call from a second loop is a RuntimeError, and the server sees no create."""
    with asyncio.Runner() as first, asyncio.Runner() as second:
        emulator = KlingEmulator()
        first.run(emulator.start())
        session = official(emulator)
        first.run(session.__aenter__())
        try:
            with pytest.raises(RuntimeError, match="another event loop") as caught:
                second.run(session.extend("vid-1"))
            assert not isinstance(caught.value, AmbiguousCreateError)
            first.run(asyncio.sleep(0.05))  # anything that was sent would arrive now
            assert 0 == emulator.count("create")
        finally:
            first.run(session.aclose())
            first.run(emulator.close())


# -- 5. the state a handle has seen never goes back ----------------------------------------------


async def test_a_stale_reply_never_moves_a_handle_back() -> None:
    """Item 5: processing, then a stale submitted, then succeed, then a stale processing."""
    replies = [
        task_object("processing", 2_000),
        task_object("submitted", 1_000),  # a lagging replica
        task_object("succeed", 3_000),
        task_object("processing", 2_500),
    ]

    async def handler(request: web.Request) -> web.Response:
        return envelope(replies.pop(0))

    async with hostile(handler) as base_url:
        session = KlingSession("key", base_url=base_url, retry_policy=RetryPolicy.instant())
        async with session:
            handle = session.task("t-1")
            seen = []
            for _ in range(4):
                await handle.poll()
                assert handle.last is not None
                seen.append((handle.last.status.value, handle.done))

    expected = [
        ("processing", False),
        ("processing", False),
        ("succeed", True),
        ("succeed", True),
    ]
    assert expected == seen


async def test_a_reply_overtaken_on_the_wire_does_not_win() -> None:
    """Item 5: a slow poll answering 'processing' after a quick get_task saw 'succeed'."""
    slow = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if not slow.is_set():
            slow.set()
            await asyncio.sleep(0.2)
            return envelope(task_object("processing", 2_000))
        return envelope(task_object("succeed", 3_000))

    async with hostile(handler) as base_url:
        session = KlingSession("key", base_url=base_url, retry_policy=RetryPolicy.instant())
        async with session:
            handle = session.task("t-1")
            async with anyio.create_task_group() as group:
                group.start_soon(handle.poll)
                await slow.wait()
                quick = await session.get_task("t-1")

    assert TaskStatus.SUCCEED is quick.status
    assert handle.last is not None
    assert (TaskStatus.SUCCEED, True) == (handle.last.status, handle.done)


# -- 6. other input holes --------------------------------------------------------------------------


def test_a_base_url_with_a_password_is_refused_without_showing_it() -> None:
    """Item 6: userinfo in base_url is refused; the password is in no message."""
    with pytest.raises(InvalidArgumentError) as caught:
        KlingSession("key", base_url="https://user:hunter2@gw.example.com/kling")
    assert "base_url" == caught.value.field
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("name", ["connect_timeout", "read_timeout"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0])
def test_timeouts_must_be_finite_positive_numbers(name: str, value: float) -> None:
    """Item 6: NaN, infinity and non-positive timeouts are refused, naming the field."""
    with pytest.raises(InvalidArgumentError) as caught:
        KlingSession("key", **{name: value})
    assert name == caught.value.field


@pytest.mark.parametrize("field", ["video_id", "prompt", "negative_prompt", "parent_task_id"])
async def test_lone_surrogates_are_refused_before_sending(
    emu: KlingEmulator, session: KlingSession, field: str
) -> None:
    """Item 6: text that cannot be UTF-8 is an InvalidArgumentError naming the field."""
    arguments: dict[str, Any] = {"video_id": "vid-1", field: "bad \udc80 text"}
    with pytest.raises(InvalidArgumentError) as caught:
        await session.extend(**arguments)
    assert field == caught.value.field
    assert 0 == emu.count("create")


async def test_a_task_id_with_a_lone_surrogate_is_refused(session: KlingSession) -> None:
    """Item 6: get_task() and task() refuse an id that cannot be UTF-8, naming task_id."""
    with pytest.raises(InvalidArgumentError, match="task_id"):
        await session.get_task("t-\ud800")
    with pytest.raises(InvalidArgumentError, match="task_id"):
        session.task("t-\ud800")


@pytest.mark.parametrize("url", ["http://[::1", "https://host:abc/cb", "ftp://host/cb", "https://"])
async def test_a_bad_callback_url_names_the_field(session: KlingSession, url: str) -> None:
    """Item 6: a callback_url that does not parse is an InvalidArgumentError naming it."""
    with pytest.raises(InvalidArgumentError) as caught:
        await session.extend("vid-1", callback_url=url)
    assert "callback_url" == caught.value.field


@pytest.mark.parametrize(
    ("task_id", "segment"), [("..", "%2E%2E"), (".", "%2E"), ("a/b", "a%2Fb"), ("../x", "..%2Fx")]
)
async def test_ids_reach_the_server_as_one_literal_path_segment(task_id: str, segment: str) -> None:
    """Item 6: ``..`` or ``a/b`` are percent-encoded, never resolved into another endpoint."""
    paths: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return envelope(task_object("processing", 1, task_id=task_id))

    async with hostile(handler) as base_url:
        session = KlingSession("key", base_url=base_url + "/kling")
        async with session:
            task = await session.get_task(task_id)

    assert [f"/kling{EXTEND}/{segment}"] == paths
    assert task_id == task.task_id


# -- 7. no credential is reachable from an error -------------------------------------------------


def _reaches(value: object, secret: str, depth: int = 0, seen: set[int] | None = None) -> bool:
    """Whether ``secret`` is reachable from ``value`` through attributes, items and causes."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 6:
        return False
    seen.add(id(value))
    if isinstance(value, (str, bytes)):
        return secret in (value if isinstance(value, str) else value.decode("latin-1"))
    if isinstance(value, (int, float, bool, type(None), type)):
        return False
    if isinstance(value, BaseException):
        parts: list[object] = [value.__cause__, value.__context__, *value.args, str(value)]
        parts.append(repr(value))
        parts.extend(vars(value).values())
        return any(_reaches(part, secret, depth + 1, seen) for part in parts)
    if isinstance(value, dict) or hasattr(value, "items"):
        try:
            items = list(value.items())  # type: ignore[attr-defined]
        except Exception:  # a mapping-like that will not list: nothing to see
            return False
        return any(
            _reaches(k, secret, depth + 1, seen) or _reaches(v, secret, depth + 1, seen)
            for k, v in items
        )
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_reaches(item, secret, depth + 1, seen) for item in value)
    fields = getattr(value, "__dict__", None) or {
        name: getattr(value, name, None) for name in getattr(value, "__slots__", ())
    }
    if hasattr(value, "_fields"):  # a namedtuple such as aiohttp's RequestInfo
        fields = {name: getattr(value, name) for name in value._fields}  # type: ignore[attr-defined]
    return any(_reaches(v, secret, depth + 1, seen) for v in fields.values()) or _reaches(
        repr(value), secret, depth + 1, seen
    )


@contextlib.asynccontextmanager
async def garbage_server(reply: bytes) -> AsyncIterator[tuple[str, list[str]]]:
    """A TCP server that answers every request with ``reply`` and records its Authorization."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            for line in head.split("\r\n"):
                if line.lower().startswith("authorization:"):
                    seen.append(line.split(":", 1)[1].strip().removeprefix("Bearer "))
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 abc garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}",
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"code":0',
        b"\x00\x01\x02 not http at all\r\n\r\n",
    ],
    ids=["bad status line", "bad length", "cut short", "binary"],
)
@pytest.mark.parametrize("call", ["get_task", "extend"])
async def test_no_error_chain_reaches_the_jwt(reply: bytes, call: str) -> None:
    """Item 7: from any KlingError raised, causes and contexts never lead to the token."""
    async with garbage_server(reply) as (base_url, seen):
        session = KlingSession(
            access_key="ak", secret_key="sk", base_url=base_url, retry_policy=RetryPolicy.instant()
        )
        async with session:
            send = session.get_task("t-1") if call == "get_task" else session.extend("vid-1")
            with pytest.raises(KlingError) as caught:
                await send

    assert seen  # the token was sent: it is what must not be reachable
    assert not any(_reaches(caught.value, token) for token in set(seen))


# -- 8. the create deadline runs on the event loop's clock ---------------------------------------


class _FarFutureLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is far from time.monotonic() (as a custom loop's may be)."""

    def time(self) -> float:
        return super().time() + 1_000_000.0


def test_a_create_runs_on_a_loop_whose_clock_is_not_monotonic() -> None:
    """Item 8: the create deadline is taken from the loop's clock, so the create goes through."""

    async def main() -> tuple[str, int]:
        async with KlingEmulator(list_mode="404") as emulator, gateway(emulator) as session:
            handle = await session.extend("vid-1")
            return handle.task_id, len(emulator.tasks)

    with asyncio.Runner(loop_factory=_FarFutureLoop) as runner:
        task_id, tasks = runner.run(main())
    assert (True, 1) == (bool(task_id), tasks)


# -- 9. trio: a clear error at once ----------------------------------------------------------------


def test_opening_a_session_without_asyncio_says_so() -> None:
    """Item 9: without a running asyncio loop (trio, say), __aenter__ raises a clear error."""
    session = KlingSession("key", base_url="https://gw.example.com/kling")
    opening = session.__aenter__()
    with pytest.raises(RuntimeError, match="runs on asyncio"):
        opening.send(None)
    opening.close()


def test_opening_a_session_under_trio_says_it_runs_on_asyncio() -> None:
    """Item 9: under anyio's trio backend, the error names asyncio instead of failing deep."""
    trio = pytest.importorskip("trio", reason="trio is a test extra")
    assert trio is not None

    async def main() -> None:
        async with KlingSession("key", base_url="https://gw.example.com/kling"):
            pass  # pragma: no cover - never opened

    with pytest.raises(RuntimeError, match="runs on asyncio"):
        anyio.run(main, backend="trio")


# -- emulator fidelity as the SDK sees it: watermarks and deductions -------------------------------


async def test_watermark_is_sent_as_watermark_info(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """extend(watermark=True) sends watermark_info: {"enabled": true}; None sends nothing."""
    await session.extend("vid-1", watermark=True)
    await session.extend("vid-2")
    bodies = [r.json for r in emu.requests if r.route == "create"]
    assert [{"enabled": True}, None] == [body.get("watermark_info") for body in bodies]


async def test_watermark_url_and_deduction_are_read() -> None:
    """Replies with the 2026 fields give Video.watermark_url and Task.final_unit_deduction."""
    done = task_object("succeed", 3_000)
    done["final_unit_deduction"] = "1.5"
    done["watermark_info"] = {"enabled": True}
    done["task_result"] = {
        "videos": [{"id": "v", "url": "https://cdn/v.mp4", "watermark_url": "https://cdn/w.mp4"}]
    }

    async def handler(request: web.Request) -> web.Response:
        return envelope(done)

    async with hostile(handler) as base_url, KlingSession("key", base_url=base_url) as session:
        task = await session.get_task("t-1")

    assert task.video is not None
    assert ("https://cdn/w.mp4", "1.5") == (task.video.watermark_url, task.final_unit_deduction)


def test_a_watermark_must_be_a_bool() -> None:
    """watermark=1 is a TypeError before anything is sent."""
    from kling_async import ExtendRequest

    with pytest.raises(TypeError, match="watermark"):
        ExtendRequest(video_id="v", watermark=1)  # type: ignore[arg-type]  # wrong on purpose
