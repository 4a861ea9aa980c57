"""Specification of callbacks: `CallbackReceiver` mounted in real web apps, fed by the emulator."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import gc
import json
import pathlib
import socket
import time
import tracemalloc
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from kling_async import (
    CallbackReceiver,
    ExtendRequest,
    KlingSession,
    PollPolicy,
    RetryPolicy,
    TaskHandle,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

MOUNT = "/kling/callbacks"
SLOW = PollPolicy()  # the default schedule: polls alone would take 15 s and more


@contextlib.contextmanager
def loopback_socket() -> Iterator[socket.socket]:
    """A bound TCP socket on 127.0.0.1 (its port is known before the app is built)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def public_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}{MOUNT}"


@contextlib.asynccontextmanager
async def aiohttp_app(**options: Any) -> AsyncIterator[CallbackReceiver]:
    """A real aiohttp.web application with the receiver as a sub-application."""
    with loopback_socket() as sock:
        receiver = CallbackReceiver(public_url(sock), **options)
        app = web.Application()
        app.add_subapp(MOUNT, receiver.aiohttp_app())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock, backlog=1024).start()
            yield receiver
        finally:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def fastapi_app(**options: Any) -> AsyncIterator[CallbackReceiver]:
    """A real FastAPI application served by uvicorn, the receiver mounted in it."""
    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    with loopback_socket() as sock:
        receiver = CallbackReceiver(public_url(sock), **options)
        app = fastapi.FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        app.mount(MOUNT, receiver.asgi_app)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", backlog=1024)
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [sock])
            with anyio.fail_after(5):
                while not server.started:
                    await anyio.sleep(0.005)
            try:
                yield receiver
            finally:
                server.should_exit = True


def queries_per_task(emu: KlingEmulator) -> collections.Counter[str]:
    return collections.Counter(
        urllib.parse.unquote(r.path.rsplit("/", 1)[1]) for r in emu.requests if r.route == "query"
    )


def token_of(handle_url: str) -> str:
    return handle_url.rsplit("/", 1)[1]


def callback_url_of(emu: KlingEmulator, handle: TaskHandle) -> str:
    url = emu.tasks[handle.task_id].callback_url
    assert url is not None
    return url


def spread(count: int) -> Any:
    """Task timing: processing after 0.2 s (while the batch is still being created), then
    each finishing 4 ms after the previous one, from 0.55 s on."""
    return lambda task: (0.2, 0.35 + (task.index % count) * 0.004)


@pytest.mark.anyio
@pytest.mark.parametrize("framework", ["aiohttp", "fastapi"])
async def test_waits_complete_from_callbacks(framework: str) -> None:
    """200 waits end from callbacks: one confirming query per task, no poll, no list.

    With the default schedule and the 60 s safety cadence, no poll is due within the test:
    every wait that ends did so because a callback woke it. How fast is measured in
    bench/bench_callbacks.py, not here.
    """
    count = 200
    mount = aiohttp_app if framework == "aiohttp" else fastapi_app
    async with (
        mount() as receiver,
        KlingEmulator(task_seconds=spread(count)) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handles = await session.extend_many([session_request(f"vid-{i}") for i in range(count)])
        typed = [h for h in handles if isinstance(h, TaskHandle)]
        assert count == len(typed)
        done: list[str] = []
        with anyio.fail_after(10):  # bounds a hang; polls alone would take 60 s
            if framework == "aiohttp":  # a gather of waits

                async def wait(handle: TaskHandle) -> None:
                    done.append((await handle.wait()).status.value)

                async with anyio.create_task_group() as group:
                    for handle in typed:
                        group.start_soon(wait, handle)
            else:  # as_completed
                async for task in session.as_completed(typed):
                    done.append(task.status.value)
        assert ["succeed"] * count == done
        per_task = queries_per_task(emu)
        assert {h.task_id: 1 for h in typed} == dict(per_task)  # one confirm each, no poll
        assert 0 == emu.count("list")
        await emu.drain_callbacks()
        assert {200} == {c.status for c in emu.callbacks}
        assert 0 == session.statistics().callback_tokens


def session_request(video_id: str) -> ExtendRequest:
    return ExtendRequest(video_id=video_id)


@pytest.mark.anyio
async def test_every_create_gets_its_own_token_and_a_callers_url_is_kept() -> None:
    """Each extend gets public_url/<token> (>= 128 bits, unique); a caller's own URL is sent."""
    async with (
        aiohttp_app() as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver) as session,
    ):
        first = await session.extend("vid-1")
        second = await session.extend("vid-2")
        own = await session.extend("vid-3", callback_url="https://hooks.example.com/mine")
        urls = [callback_url_of(emu, h) for h in (first, second)]
        tokens = [token_of(url) for url in urls]
        assert all(url.startswith(receiver.public_url + "/") for url in urls)
        assert len(set(tokens)) == 2
        assert all(len(t) * 6 >= 128 for t in tokens)
        assert "https://hooks.example.com/mine" == emu.tasks[own.task_id].callback_url


@pytest.mark.anyio
async def test_forged_callbacks_are_rejected() -> None:
    """Wrong token: 404; not JSON or not a task: 400; oversized: 413; another task's id: 400."""
    async with (
        aiohttp_app(max_body_bytes=2048) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver) as session,
        aiohttp.ClientSession() as http,
    ):
        handle = await session.extend("vid-1")
        url = callback_url_of(emu, handle)
        token = token_of(url)
        body = {"task_id": handle.task_id, "task_status": "processing"}
        wrong = url[: -len(token)] + ("A" if token[0] != "A" else "B") + token[1:]

        async def post(target: str, data: bytes) -> int:
            async with http.post(target, data=data) as response:
                return response.status

        assert 404 == await post(wrong, json.dumps(body).encode())
        assert 404 == await post(receiver.public_url + "/short", json.dumps(body).encode())
        assert 400 == await post(url, b"<html>not json</html>")
        assert 400 == await post(url, b"[1, 2]")
        assert 400 == await post(url, json.dumps({"task_id": handle.task_id}).encode())
        assert 413 == await post(url, b"{" + b" " * 4096 + b"}")
        other = {"task_id": "999", "task_status": "succeed"}
        assert 400 == await post(url, json.dumps(other).encode())
        async with http.get(url) as response:
            assert 405 == response.status
        assert 200 == await post(url, json.dumps(body).encode())
        assert "processing" == handle.status
        assert 413 == await receiver.deliver(token, b"x" * 4096)
        assert 404 == await receiver.deliver("x" * len(token), b"{}")


@pytest.mark.anyio
async def test_a_forged_succeed_never_ends_a_wait() -> None:
    """With confirm on, a 'succeed' for a task still running costs one query, ends no wait."""
    async with (
        aiohttp_app() as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        forged = {"task_id": handle.task_id, "task_status": "succeed", "task_result": {}}
        async with anyio.create_task_group() as group:
            group.start_soon(handle.wait)
            await anyio.sleep(0.01)
            assert 200 == await receiver.deliver(token, json.dumps(forged).encode())
            await anyio.sleep(0.1)
            assert not handle.done
            assert 1 == queries_per_task(emu)[handle.task_id]
            # A burst of forged ones is not a burst of queries.
            for _ in range(20):
                await receiver.deliver(token, json.dumps(forged).encode())
            await anyio.sleep(0.1)
            assert 1 == queries_per_task(emu)[handle.task_id]
            emu.set_status(handle.task_id, "succeed")  # the real one: its callback ends it
            with anyio.fail_after(3):
                while not handle.done:
                    await anyio.sleep(0.01)
        assert "succeed" == handle.status


@pytest.mark.anyio
async def test_confirm_off_trusts_the_body() -> None:
    """confirm=False: a callback that says done ends the wait without a query."""
    async with (
        aiohttp_app(confirm=False) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        again = session.task(handle.task_id)  # another handle of the same task
        with anyio.fail_after(2):
            async with anyio.create_task_group() as group:
                group.start_soon(handle.wait)
                group.start_soon(again.wait)
                await anyio.sleep(0.01)
                emu.set_status(handle.task_id, "succeed")
        assert again.done
        assert 0 == emu.count("query")


@pytest.mark.anyio
async def test_lost_callbacks_fall_back_to_polling() -> None:
    """A lost final callback delays the wait until the safety poll, never hangs it."""
    async with (
        fastapi_app(safety_interval=0.3) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        emu.inject(Fault.callback_lost(), route="callback", times=5)
        emu.set_status(handle.task_id, "succeed")
        started = time.monotonic()
        with anyio.fail_after(3):
            task = await handle.wait()
        assert "succeed" == task.status.value
        assert 0.15 < time.monotonic() - started
        assert ["lost"] == [c.error for c in emu.callbacks if c.body["task_status"] == "succeed"]


@pytest.mark.anyio
async def test_duplicated_and_reordered_callbacks_never_move_back() -> None:
    """A late 'processing' after 'succeed' changes nothing; duplicates are answered 200."""
    async with (
        aiohttp_app() as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        statuses: list[str] = []

        async def watch() -> None:
            async for task in handle.watch():
                statuses.append(task.status.value)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await anyio.sleep(0.01)
            emu.inject(Fault.callback_reordered(), route="callback")
            emu.set_status(handle.task_id, "processing")
            emu.inject(Fault.callback_duplicated(), route="callback")
            emu.set_status(handle.task_id, "succeed")
            await emu.drain_callbacks()
        assert "succeed" == statuses[-1]
        assert statuses == sorted(statuses, key=["submitted", "processing", "succeed"].index)
        assert "succeed" == handle.status
        assert {200} == {c.status for c in emu.callbacks}
        token = token_of(callback_url_of(emu, handle))
        late = {"task_id": handle.task_id, "task_status": "processing"}
        assert 200 == await receiver.deliver(token, json.dumps(late).encode())
        assert "succeed" == handle.status


@pytest.mark.anyio
async def test_a_callback_before_the_create_reply_is_kept() -> None:
    """A callback that beats the create's reply is applied once the reply binds its token."""
    async with (
        aiohttp_app(confirm=False) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        emu.inject(Fault.callback_before_reply(), route="callback")
        handle = await session.extend("vid-1")
        before = [c for c in emu.callbacks if c.fault is not None]
        assert [200] == [c.status for c in before]
        assert "submitted" == handle.status


@pytest.mark.anyio
async def test_an_early_final_callback_is_confirmed_after_the_reply() -> None:
    """An early 'succeed', kept before the reply bound its token, is confirmed by one query."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks")
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        link = session._submitter.link
        assert link is not None
        binding, url = link.issue()  # as extend() does, before it sends the create
        made = await session.extend("vid-1", callback_url="http://127.0.0.1:9/elsewhere")
        emu.set_status(made.task_id, "succeed")
        early = json.dumps({"task_id": made.task_id, "task_status": "succeed"}).encode()
        assert 200 == await receiver.deliver(token_of(url), early)
        assert not made.done
        link.bind(binding, made.task_id)  # the reply came: the early callback applies
        with anyio.fail_after(2):  # polls alone would not look before 15 s
            task = await made.wait()
        assert "succeed" == task.status.value
        assert 1 == queries_per_task(emu)[made.task_id]


@pytest.mark.anyio
async def test_gateway_id_mapping() -> None:
    """Through a gateway the body may carry Kling's id: the first differing id is recorded."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks", confirm=False)
    async with (
        KlingEmulator(auto_advance=False) as emu,
        gateway(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))

        def body(task_id: str, status: str) -> bytes:
            return json.dumps({"task_id": task_id, "task_status": status}).encode()

        assert 200 == await receiver.deliver(token, body("kling-777", "processing"))
        assert "processing" == handle.status
        assert handle.task_id == (handle.last and handle.last.task_id)
        assert 400 == await receiver.deliver(token, body("kling-888", "succeed"))
        assert not handle.done
        assert 200 == await receiver.deliver(token, body(handle.task_id, "processing"))
        assert 200 == await receiver.deliver(token, body("kling-777", "succeed"))
        assert handle.done
        assert handle.task_id == (handle.last and handle.last.task_id)


@pytest.mark.anyio
async def test_official_sessions_refuse_a_differing_id() -> None:
    """With Kling's own keys there is no id mapping: another id is another task (400)."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks")
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        other = json.dumps({"task_id": "kling-777", "task_status": "processing"}).encode()
        assert 400 == await receiver.deliver(token, other)


@pytest.mark.anyio
async def test_a_closed_sessions_tokens_get_404() -> None:
    """Closing a session forgets its tokens; the receiver holds nothing for it any more."""
    async with aiohttp_app() as receiver, KlingEmulator(auto_advance=False) as emu:
        async with official(emu, callbacks=receiver) as session:
            handle = await session.extend("vid-1")
            url = callback_url_of(emu, handle)
        body = json.dumps({"task_id": handle.task_id, "task_status": "processing"}).encode()
        assert 404 == await receiver.deliver(token_of(url), body)
        assert 0 == len(receiver._bindings)
        async with aiohttp.ClientSession() as http, http.post(url, data=body) as response:
            assert 404 == response.status


@pytest.mark.anyio
async def test_one_receiver_serves_several_sessions_and_keyed_creates(
    tmp_path: pathlib.Path,
) -> None:
    """Two sessions share a receiver; keyed creates and extend_many get tokens too."""
    async with (
        aiohttp_app(confirm=False) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, journal=tmp_path / "journal.sqlite3") as first,
        official(emu, callbacks=receiver) as second,
    ):
        keyed = await first.extend("vid-1", key="row-1")
        (batch,) = await second.extend_many([session_request("vid-2")])
        assert isinstance(batch, TaskHandle)
        for handle in (keyed, batch):
            assert callback_url_of(emu, handle).startswith(receiver.public_url + "/")
            emu.set_status(handle.task_id, "succeed")
        await emu.drain_callbacks()
        assert keyed.done
        assert batch.done
        again = await first.extend("vid-1", key="row-1")  # journaled: nothing sent
        assert keyed.task_id == again.task_id


@pytest.mark.anyio
async def test_memory_does_not_grow_per_callback() -> None:
    """Tokens of finished tasks are retired; callbacks add nothing to what is kept."""
    async with (
        aiohttp_app(confirm=False) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        body = json.dumps({"task_id": handle.task_id, "task_status": "processing"}).encode()
        for _ in range(100):
            assert 200 == await receiver.deliver(token, body)
        assert 0 == emu.count("query")
        assert 1 == len(receiver._bindings)
        link = session._submitter.link
        assert link is not None
        assert (1, 0) == (len(link.active), len(link.finished))
        emu.set_status(handle.task_id, "succeed")
        await emu.drain_callbacks()
        assert (0, 1) == (len(link.active), len(link.finished))
        assert 200 == await receiver.deliver(token, body)  # a late duplicate


def final_callback(task_id: str, url: str = "https://cdn.example.com/v.mp4") -> bytes:
    """A callback body of a task that succeeded, with its result."""
    result = {"videos": [{"id": "v1", "url": url, "duration": "5"}]}
    body = {"task_id": task_id, "task_status": "succeed", "task_result": result}
    return json.dumps(body).encode()


def held_by_the_sdk(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes allocated in the SDK's own code between two snapshots and still held."""
    ours = [
        tracemalloc.Filter(True, "*/kling_async/*"),
        tracemalloc.Filter(True, "<cattrs generated*"),  # the models, made from replies
        tracemalloc.Filter(False, "*/kling_async/testing/*"),
    ]
    diff = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    return sum(stat.size_diff for stat in diff)


@pytest.mark.anyio
async def test_fire_and_forget_creates_keep_nothing_once_their_callbacks_came() -> None:
    """The web app pattern: creates nobody waits on hold a token and a state only while open.

    With confirm on, a final callback for a task nobody waits on retires its token and
    lets the state go; a wait that comes later confirms with one query.
    """
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks")
    count, more = 2000, 200
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW, retry_policy=RetryPolicy()) as session,
    ):

        async def fire_and_forget(number: int) -> list[tuple[str, str]]:
            """Create ``number`` tasks, keep only (task id, token), as a web app does."""
            made = await session.extend_many([session_request(f"v{i}") for i in range(number)])
            typed = [h for h in made if isinstance(h, TaskHandle)]
            assert number == len(typed)
            return [(h.task_id, token_of(callback_url_of(emu, h))) for h in typed]

        async def finish(tasks: list[tuple[str, str]]) -> None:
            for task_id, token in tasks:
                assert 200 == await receiver.deliver(token, final_callback(task_id))

        tasks = await fire_and_forget(count)
        gc.collect()
        opened = session.statistics()
        assert (count, count) == (opened.callback_tokens, opened.tasks_tracked)
        kept = session.task(tasks[0][0])  # a handle held, but no wait on it
        await finish(tasks)
        gc.collect()
        finished = session.statistics()
        assert (0, 1) == (finished.callback_tokens, finished.tasks_tracked)
        assert 0 == emu.count("query")
        # A late duplicate of a retired token is answered 200 and changes nothing.
        assert 200 == await receiver.deliver(tasks[-1][1], final_callback(tasks[-1][0]))
        assert 0 == session.statistics().callback_tokens
        # Past the first creates, more of them hold nothing more once finished.
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            await finish(await fire_and_forget(more))
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        # What churns is bounded (the newest retired tokens, the ids a session remembers); a
        # state, its tasks and a live token kept per finished create come to over 1 kB.
        assert held_by_the_sdk(before, after) < more * 600
        # Someone waits after all: one query confirms, on the held handle and on a new one.
        for task_id, _ in tasks[:2]:
            emu.set_status(task_id, "succeed")
        assert "succeed" == (await kept.wait()).status.value
        assert "succeed" == (await session.task(tasks[1][0]).wait()).status.value
        assert {tasks[0][0]: 1, tasks[1][0]: 1} == dict(queries_per_task(emu))


@pytest.mark.anyio
async def test_a_final_callback_nobody_waited_on_that_was_wrong_ends_in_polls() -> None:
    """A 'succeed' for a running task nobody waits on retires its token; a wait then confirms
    (one query), finds it running, and ends by the usual polls, not the safety cadence."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks", safety_interval=3600)
    quick = PollPolicy(first_delay=0.05, interval=0.05, min_duration=0.1, max_duration=1.0)
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=quick, retry_policy=RetryPolicy()) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        assert 200 == await receiver.deliver(token, final_callback(handle.task_id))
        assert 0 == session.statistics().callback_tokens
        assert 0 == emu.count("query")
        with anyio.fail_after(5):  # the safety cadence alone would take an hour
            async with anyio.create_task_group() as group:
                group.start_soon(handle.wait)
                while emu.count("query") < 1:
                    await anyio.sleep(0.005)
                assert not handle.done  # the confirm found it running
                emu.set_status(handle.task_id, "succeed")
        assert handle.done
        assert 2 <= emu.count("query")


@pytest.mark.anyio
@pytest.mark.parametrize("confirm", [True, False])
async def test_a_callbacks_clock_never_outranks_the_servers_replies(confirm: bool) -> None:
    """A callback dated 2100 moves the status as a hint; the next reply replaces it."""
    async with (
        aiohttp_app(confirm=confirm) as receiver,
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW, retry_policy=RetryPolicy()) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        far = int(datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc).timestamp() * 1000)
        skewed = {
            "task_id": handle.task_id,
            "task_status": "processing",
            "task_status_msg": "from the future",
            "updated_at": far,
        }
        assert 200 == await receiver.deliver(token, json.dumps(skewed).encode())
        assert "processing" == handle.status  # the hint moved the status on
        emu.set_status(handle.task_id, "processing", message="rendering")
        task = await handle.poll()
        assert ("rendering", True) == (task.status_message, task.updated_at.year < 2100)  # type: ignore[union-attr]
        assert task == handle.last
        emu.set_status(handle.task_id, "succeed")
        with anyio.fail_after(2):
            done = await handle.wait()
        assert done.updated_at is not None
        assert done.updated_at.year < 2100


@pytest.mark.anyio
async def test_with_confirm_no_result_comes_from_a_callback_alone() -> None:
    """With confirm on, a video URL reaches a caller only once a reply of the server gave it."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks")
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW, retry_policy=RetryPolicy()) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        forged_url = "https://forged.example.com/v.mp4"
        result = {"videos": [{"id": "v1", "url": forged_url, "duration": "5"}]}
        early = {"task_id": handle.task_id, "task_status": "processing", "task_result": result}
        statuses: list[str] = []
        urls: list[str | None] = []

        async def watch() -> None:
            async for task in handle.watch():
                statuses.append(task.status.value)
                urls.append(task.video.url if task.video else None)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                await anyio.sleep(0.01)
                assert 200 == await receiver.deliver(token, json.dumps(early).encode())
                started = await handle.wait_started()
                assert "processing" == started.status.value
                assert started.video is None
                emu.set_status(handle.task_id, "succeed")
                assert 200 == await receiver.deliver(
                    token, final_callback(handle.task_id, forged_url)
                )
                task = await handle.wait()
        real = emu.tasks[handle.task_id]
        assert "succeed" == statuses[-1]
        assert task.video is not None
        assert forged_url != task.video.url
        assert forged_url not in urls
        assert real.task_id == task.task_id


def test_public_url_must_be_https_except_on_loopback() -> None:
    """http:// only on loopback; no query, fragment or user info."""
    assert (
        "https://app.example.com/cb" == CallbackReceiver("https://app.example.com/cb/").public_url
    )
    CallbackReceiver("http://localhost:8080/cb")
    CallbackReceiver("http://[::1]:8080/cb")
    for bad in ("http://app.example.com/cb", "ftp://x/cb", "https://x/cb?a=1", "https://u@x/cb"):
        with pytest.raises(ValueError):
            CallbackReceiver(bad)
    with pytest.raises(TypeError):
        KlingSession("key", callbacks="https://x/cb")  # type: ignore[arg-type]


def test_receiver_options_are_checked() -> None:
    """Sizes and intervals are validated when the receiver is made."""
    with pytest.raises(ValueError):
        CallbackReceiver("https://x/cb", max_body_bytes=0)
    with pytest.raises(ValueError):
        CallbackReceiver("https://x/cb", safety_interval=0)
    with pytest.raises(TypeError):
        CallbackReceiver("https://x/cb", confirm=1)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_asgi_app_on_its_own() -> None:
    """Served at the root (no mount): lifespan, 405, 404, 413 by header and by stream."""
    receiver = CallbackReceiver("http://127.0.0.1:9")
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    def receiver_of(*messages: dict[str, Any]) -> Any:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        return receive

    lifespan = receiver_of({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    await receiver.asgi_app({"type": "lifespan"}, lifespan, send)
    assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == [m["type"] for m in sent]

    async def status(scope: dict[str, Any], *messages: dict[str, Any]) -> int:
        sent.clear()
        await receiver.asgi_app({"type": "http", **scope}, receiver_of(*messages), send)
        return int(sent[0]["status"])

    body = {"type": "http.request", "body": b"{}", "more_body": False}
    assert 405 == await status({"method": "GET", "path": "/x", "headers": []}, body)
    assert 404 == await status({"method": "POST", "path": "/x", "headers": []}, body)
    assert 404 == await status({"method": "POST", "path": "/a/b", "headers": []}, body)
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver) as session,
    ):
        handle = await session.extend("vid-1")
        path = "/" + token_of(callback_url_of(emu, handle))
        big = [(b"content-length", b"999999")]
        assert 413 == await status({"method": "POST", "path": path, "headers": big}, body)
        chunk = {"type": "http.request", "body": b"x" * 40000, "more_body": True}
        assert 413 == await status({"method": "POST", "path": path, "headers": []}, chunk, chunk)
        task = json.dumps({"task_id": handle.task_id, "task_status": "processing"}).encode()
        parts = [
            {"type": "http.request", "body": task[:10], "more_body": True},
            {"type": "http.request", "body": task[10:], "more_body": False},
        ]
        assert 200 == await status({"method": "POST", "path": path, "headers": []}, *parts)
        assert "processing" == handle.status


@pytest.mark.anyio
async def test_a_receiver_served_from_another_thread_hands_over_to_the_session_loop() -> None:
    """deliver() on another event loop applies the hint on the session's own loop."""
    receiver = CallbackReceiver("http://127.0.0.1:9/kling/callbacks", confirm=False)
    async with (
        KlingEmulator(auto_advance=False) as emu,
        official(emu, callbacks=receiver, poll_policy=SLOW) as session,
    ):
        handle = await session.extend("vid-1")
        token = token_of(callback_url_of(emu, handle))
        body = json.dumps({"task_id": handle.task_id, "task_status": "processing"}).encode()

        def elsewhere() -> int:
            return asyncio.run(receiver.deliver(token, body))

        assert 200 == await anyio.to_thread.run_sync(elsewhere)
        with anyio.fail_after(2):
            while handle.status != "processing":
                await anyio.sleep(0.005)
