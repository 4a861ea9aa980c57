"""KlingSession over real HTTP against the emulator: creating, querying, listing, lifetime."""

from __future__ import annotations

import gc
import json

import aiohttp
import pytest

from kling_async import (
    AuthenticationError,
    InvalidArgumentError,
    KlingSession,
    ListUnavailableError,
    NotFoundError,
    SessionClosedError,
    TaskStatus,
)
from kling_async.testing import KlingEmulator

from .helpers import gateway, official

pytestmark = pytest.mark.anyio


async def test_extend_sends_one_create_and_returns_a_submitted_handle(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """extend() posts the body of api.md with the three required headers and returns a handle."""
    handle = await session.extend("vid-1", prompt="zoom out", cfg_scale=0.7)

    assert handle.status is TaskStatus.SUBMITTED
    assert [handle.task_id] == list(emu.tasks)
    (create,) = [r for r in emu.requests if r.route == "create"]
    assert create.json["video_id"] == "vid-1"
    assert create.json["prompt"] == "zoom out"
    assert create.json["cfg_scale"] == 0.7
    assert create.json["external_task_id"].startswith("kling-async-")
    assert "negative_prompt" not in create.json
    assert create.headers["Accept"] == "application/json"
    assert create.headers["Content-Type"] == "application/json"
    assert create.headers["Authorization"].startswith("Bearer ey")


async def test_extend_sends_every_optional_field(emu: KlingEmulator, session: KlingSession) -> None:
    """All optional arguments reach the wire; parent_task_id travels as task_id."""
    await session.extend(
        "vid-1",
        prompt="p",
        negative_prompt="n",
        cfg_scale=0,
        callback_url="https://example.com/hook",
        parent_task_id="parent-1",
        external_task_id="mine-1",
    )

    (create,) = [r for r in emu.requests if r.route == "create"]
    assert {
        "video_id": "vid-1",
        "prompt": "p",
        "negative_prompt": "n",
        "cfg_scale": 0,
        "callback_url": "https://example.com/hook",
        "task_id": "parent-1",
        "external_task_id": "mine-1",
    } == create.json


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"video_id": ""}, "video_id"),
        ({"video_id": "   "}, "video_id"),
        ({"video_id": "v", "prompt": "x" * 2501}, "prompt"),
        ({"video_id": "v", "negative_prompt": "x" * 2501}, "negative_prompt"),
        ({"video_id": "v", "cfg_scale": 1.5}, "cfg_scale"),
        ({"video_id": "v", "cfg_scale": -0.1}, "cfg_scale"),
        ({"video_id": "v", "callback_url": "ftp://example.com"}, "callback_url"),
        ({"video_id": "v", "callback_url": "not a url"}, "callback_url"),
        ({"video_id": "v", "parent_task_id": ""}, "parent_task_id"),
    ],
)
async def test_bad_arguments_fail_before_any_request(
    emu: KlingEmulator, session: KlingSession, arguments: dict[str, object], field: str
) -> None:
    """Validation raises an InvalidArgumentError naming the field, and nothing is sent."""
    video_id = arguments.pop("video_id")
    with pytest.raises(InvalidArgumentError) as caught:
        await session.extend(video_id, **arguments)  # type: ignore[arg-type]

    assert field == caught.value.field
    assert isinstance(caught.value, ValueError)
    assert [] == emu.requests


async def test_wrong_argument_types_raise_type_error(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """A value of the wrong type is misuse: TypeError, before any request."""
    with pytest.raises(TypeError):
        await session.extend(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await session.extend("v", cfg_scale="0.5")  # type: ignore[arg-type]
    assert [] == emu.requests


async def test_get_task_by_task_id_and_by_external_id(session: KlingSession) -> None:
    """get_task() accepts the task id or the external id (api.md: query by external id)."""
    handle = await session.extend("vid-1", external_task_id="order-42")

    by_id = await session.get_task(handle.task_id)
    by_external = await session.get_task("order-42")

    assert handle.task_id == by_id.task_id == by_external.task_id
    assert "order-42" == by_external.external_task_id
    assert by_id.parent_video is not None
    assert "vid-1" == by_id.parent_video.id


async def test_get_task_of_an_unknown_task_raises_not_found(session: KlingSession) -> None:
    """A task the server does not know is a NotFoundError carrying the task id and request id."""
    with pytest.raises(NotFoundError) as caught:
        await session.get_task("no-such-task")

    assert 404 == caught.value.status
    assert 1203 == caught.value.code
    assert "no-such-task" == caught.value.task_id
    assert caught.value.request_id


async def test_list_tasks_walks_every_page_newest_first(
    emu: KlingEmulator, session: KlingSession
) -> None:
    """list_tasks() yields each task once, newest first, asking page by page."""
    created = [(await session.extend(f"vid-{n}")).task_id for n in range(5)]

    listed = [task.task_id async for task in session.list_tasks(page_size=2)]

    assert list(reversed(created)) == listed
    assert 3 == emu.count("list")


async def test_list_tasks_stops_after_max_pages(emu: KlingEmulator, session: KlingSession) -> None:
    """max_pages bounds how many pages are fetched."""
    for n in range(5):
        await session.extend(f"vid-{n}")

    listed = [task async for task in session.list_tasks(page_size=2, max_pages=1)]

    assert 2 == len(listed)
    assert 1 == emu.count("list")


@pytest.mark.parametrize("page_size", [0, 501])
async def test_list_tasks_checks_page_size_before_any_request(
    emu: KlingEmulator, session: KlingSession, page_size: int
) -> None:
    """pageSize outside 1..500 is refused when list_tasks() is called, not at iteration."""
    with pytest.raises(ValueError, match="page_size"):
        session.list_tasks(page_size=page_size)
    assert [] == emu.requests


@pytest.mark.parametrize("list_mode", ["404", "html"])
async def test_a_gateway_without_the_list_endpoint_says_so(list_mode: str) -> None:
    """A 404 or an HTML page with status 200 on the list route is ListUnavailableError."""
    async with KlingEmulator(list_mode=list_mode) as emulator, gateway(emulator) as session:
        with pytest.raises(ListUnavailableError, match="list endpoint"):
            [task async for task in session.list_tasks()]
        assert 1 == emulator.count("list")


async def test_gateway_mode_sends_the_api_key_and_no_stamp() -> None:
    """Through a gateway: Bearer api key under /kling, parent task id sent, no external id."""
    async with (
        KlingEmulator(require_parent_task_id=True) as emulator,
        gateway(emulator) as session,
    ):
        handle = await session.extend("vid-1", parent_task_id="parent-1")
        task = await handle

    (create,) = [r for r in emulator.requests if r.route == "create"]
    assert create.path.startswith("/kling/v1/videos/video-extend")
    assert f"Bearer {emulator.api_key}" == create.headers["Authorization"]
    assert "external_task_id" not in create.json
    assert TaskStatus.SUCCEED is task.status


async def test_credentials_and_base_url_fall_back_to_the_environment(
    emu: KlingEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KLING_API_KEY and KLING_BASE_URL configure a session made with no arguments."""
    monkeypatch.setenv("KLING_API_KEY", emu.api_key)
    monkeypatch.setenv("KLING_BASE_URL", emu.gateway_url)
    monkeypatch.delenv("KLING_ACCESS_KEY", raising=False)
    monkeypatch.delenv("KLING_SECRET_KEY", raising=False)

    async with KlingSession() as session:
        await session.extend("vid-1")

    assert emu.gateway_url == session.base_url
    assert 1 == len(emu.tasks)


async def test_access_keys_fall_back_to_the_environment(
    emu: KlingEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KLING_ACCESS_KEY + KLING_SECRET_KEY sign JWTs the server accepts."""
    monkeypatch.delenv("KLING_API_KEY", raising=False)
    monkeypatch.setenv("KLING_ACCESS_KEY", emu.access_key)
    monkeypatch.setenv("KLING_SECRET_KEY", emu.secret_key)
    monkeypatch.setenv("KLING_BASE_URL", emu.base_url)

    async with KlingSession() as session:
        await session.extend("vid-1")

    assert 1 == len(emu.tasks)


def test_missing_or_conflicting_credentials_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, both kinds, or half a key pair: ValueError at construction."""
    for name in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="no credentials"):
        KlingSession()
    with pytest.raises(ValueError, match="either"):
        KlingSession("key", access_key="ak", secret_key="sk")
    with pytest.raises(ValueError, match="together"):
        KlingSession(access_key="ak")


def test_plain_http_is_refused_unless_loopback_or_opted_in() -> None:
    """Credentials never travel unencrypted by accident."""
    with pytest.raises(ValueError, match="unencrypted"):
        KlingSession("key", base_url="http://gw.example.com/kling")
    KlingSession("key", base_url="http://gw.example.com/kling", allow_insecure_http=True)
    KlingSession("key", base_url="http://127.0.0.1:8000/kling")
    KlingSession("key", base_url="http://localhost:8000")
    KlingSession("key", base_url="http://[::1]:8000")


async def test_a_wrong_api_key_is_an_authentication_error_not_retried(
    emu: KlingEmulator,
) -> None:
    """401 with 1002 is raised at once, carrying status, code and request id."""
    async with KlingSession("wrong-key", base_url=emu.gateway_url) as session:
        with pytest.raises(AuthenticationError) as caught:
            await session.extend("vid-1")

    assert (401, 1002) == (caught.value.status, caught.value.code)
    assert caught.value.request_id
    assert 1 == emu.count("create")


async def test_calls_before_opening_and_after_closing_raise_runtime_error(
    emu: KlingEmulator,
) -> None:
    """An unopened or closed session refuses every call; it opens only once."""
    session = official(emu)
    with pytest.raises(RuntimeError, match="open the session"):
        await session.extend("vid-1")

    async with session:
        pass

    assert session.closed
    with pytest.raises(SessionClosedError):
        await session.extend("vid-1")
    with pytest.raises(RuntimeError):
        await session.get_task("1")
    with pytest.raises(RuntimeError):
        session.task("1")
    with pytest.raises(RuntimeError, match="opened once"):
        await session.__aenter__()
    await session.aclose()  # closing twice is fine
    assert [] == emu.requests


async def test_a_borrowed_http_session_is_used_and_never_closed(emu: KlingEmulator) -> None:
    """http_session= borrows the caller's aiohttp.ClientSession."""
    async with aiohttp.ClientSession() as http:
        async with official(emu, http_session=http) as session:
            await session.extend("vid-1")
        assert not http.closed

    assert 1 == len(emu.tasks)


async def test_trace_configs_reach_aiohttp(emu: KlingEmulator) -> None:
    """trace_configs are passed to the owned aiohttp session."""
    seen: list[str] = []

    async def on_request_start(
        _session: object, _context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        seen.append(params.method)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with official(emu, trace_configs=[trace]) as session:
        await (await session.extend("vid-1"))

    assert ["POST", "GET", "GET", "GET"] == seen  # submitted, processing, succeed


async def test_a_session_left_open_warns_resource_warning(emu: KlingEmulator) -> None:
    """Forgetting to close a session is reported, without scheduling any coroutine."""
    async with aiohttp.ClientSession() as http:
        session = official(emu, http_session=http)
        await session.__aenter__()
        # The last reference goes inside the block: CPython finalizes at `del`, PyPy at collect.
        with pytest.warns(ResourceWarning, match="never closed"):  # noqa: PT031
            del session
            gc.collect()


async def test_secrets_never_show_in_repr(emu: KlingEmulator, session: KlingSession) -> None:
    """The secret key, API key and JWTs are absent from repr() and str()."""
    handle = await session.extend("vid-1")
    token = emu.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    async with gateway(emu) as gateway_session:
        texts = [repr(session), str(session), repr(handle), repr(gateway_session)]

    for text in texts:
        assert emu.secret_key not in text
        assert emu.api_key not in text
        assert token not in text


async def test_statistics_count_requests_and_tasks(session: KlingSession) -> None:
    """statistics() reports what the session sent and created."""
    handle = await session.extend("vid-1")
    await handle.wait()

    stats = session.statistics()
    assert (4, 0, 0, 0, 1) == (
        stats.requests_sent,
        stats.retries,
        stats.in_flight,
        stats.waits_pending,
        stats.tasks_created,
    )


async def test_callbacks_carry_the_task_object(emu: KlingEmulator, session: KlingSession) -> None:
    """callback_url is honoured by the emulator with the task object (api.md "Callbacks")."""
    from aiohttp import web

    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        handle = await session.extend("vid-1", callback_url=f"http://127.0.0.1:{port}/hook")
        await handle.wait()
        await emu.drain_callbacks()
    finally:
        await runner.cleanup()

    assert ["submitted", "processing", "succeed"] == [body["task_status"] for body in received]
    assert {handle.task_id} == {body["task_id"] for body in received}


async def test_a_closed_borrowed_http_session_is_a_clear_error(emu: KlingEmulator) -> None:
    """If the lent aiohttp session is closed first, calls raise SessionClosedError, not
    aiohttp's RuntimeError, and a create (never sent) is not reported as ambiguous."""
    http = aiohttp.ClientSession()
    async with official(emu, http_session=http) as session:
        await http.close()
        with pytest.raises(SessionClosedError, match="lent"):
            await session.extend("vid-1")
        with pytest.raises(SessionClosedError, match="lent"):
            await session.get_task("1")

    assert [] == emu.requests


def test_a_bad_journal_is_refused_before_a_bad_receiver() -> None:
    """Arguments are checked in a fixed order: the journal before the callback receiver, so
    the same mistake always gets the same message."""
    with pytest.raises(TypeError, match="journal must be a path or a Journal, not int"):
        KlingSession(api_key="k", journal=5, callbacks=object())  # type: ignore[arg-type]
