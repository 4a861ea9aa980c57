"""MockTransport: a session's requests, media downloads included, answered by a function."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import aiohttp
import anyio
import pytest

from kling_async import (
    KlingSession,
    MediaExpiredError,
    PollPolicy,
    ResponseDecodeError,
    RetryPolicy,
    TaskStatus,
    TransportError,
)
from kling_async.sansio import HTTPRequest, HTTPResponse
from kling_async.testing import MockTransport

pytestmark = pytest.mark.anyio

BASE = "https://api.example.com"
MEDIA = "https://cdn.example.com/media/v9.mp4"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 600  # more than one chunk


def reply(data: dict[str, Any], status: int = 200) -> HTTPResponse:
    """A Kling JSON envelope around ``data``."""
    body = {"code": 0, "message": "SUCCEED", "request_id": "r1", "data": data}
    return HTTPResponse(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )


def task(status: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": "t1",
        "task_status": status,
        "created_at": 1,
        "updated_at": 2,
    }
    if status == "succeed":
        data["task_result"] = {"videos": [{"id": "v9", "url": MEDIA, "duration": "10.1"}]}
    return data


def session(transport: MockTransport, **options: Any) -> KlingSession:
    return KlingSession(
        "key",
        base_url=BASE,
        transport=transport,
        list_refresh=False,
        poll_policy=PollPolicy.instant(),
        retry_policy=RetryPolicy.instant(),
        **options,
    )


class Kling:
    """A tiny fake of the API: a create, two polls, then the video."""

    def __init__(self) -> None:
        self.polls = 0

    def __call__(self, request: HTTPRequest) -> HTTPResponse:
        if request.url == MEDIA:
            return HTTPResponse(status=200, body=VIDEO, headers={"Content-Length": str(len(VIDEO))})
        if request.method == "POST":
            return reply(task("submitted"))
        self.polls += 1
        return reply(task("processing" if self.polls < 2 else "succeed"))


async def test_extend_wait_and_download_need_no_sockets(tmp_path: pathlib.Path) -> None:
    """A user's code runs end to end against a handler: create, wait, download."""
    kling = Kling()
    transport = MockTransport(kling)
    async with session(transport) as s:
        handle = await s.extend("v0", prompt="more")
        finished = await handle.wait()
        path = await s.download(finished, tmp_path)
    assert (TaskStatus.SUCCEED, VIDEO) == (finished.status, path.read_bytes())
    assert "v9.mp4" == path.name
    methods = [(r.method, r.url) for r in transport.requests]
    assert ("POST", f"{BASE}/v1/videos/video-extend") == methods[0]
    assert ("GET", MEDIA) == methods[-1]


async def test_api_requests_carry_the_key_and_media_requests_none(
    tmp_path: pathlib.Path,
) -> None:
    """The handler sees Authorization on API requests and never on the media GET."""
    transport = MockTransport(Kling())
    async with session(transport) as s:
        await s.get_task("t1")
        await s.download(await s.get_task("t1"), tmp_path)
    query, _again, media = transport.requests
    assert ("Authorization", "Bearer key") in query.headers
    assert ["Accept-Encoding"] == [name for name, _ in media.headers]


async def test_get_task_with_an_async_handler() -> None:
    """The handler may be a coroutine function."""

    async def handler(request: HTTPRequest) -> HTTPResponse:
        return reply(task("processing"))

    async with session(MockTransport(handler)) as s:
        got = await s.get_task("t1")
    assert ("t1", TaskStatus.PROCESSING) == (got.task_id, got.status)


async def test_what_the_handler_raises_reaches_the_caller() -> None:
    """An exception that is not a KlingError is not retried nor wrapped."""

    def handler(request: HTTPRequest) -> HTTPResponse:
        raise LookupError("no such route in this test")

    transport = MockTransport(handler)
    async with session(transport) as s:
        with pytest.raises(LookupError, match="no such route"):
            await s.get_task("t1")
    assert 1 == len(transport.requests)


async def test_a_transport_error_is_retried_like_a_network_failure() -> None:
    """A TransportError raised by the handler is a failed request: retried by the policy."""
    calls = 0

    def handler(request: HTTPRequest) -> HTTPResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransportError("connection refused", method="GET", path=request.path, sent=False)
        return reply(task("succeed"))

    async with session(MockTransport(handler)) as s:
        got = await s.get_task("t1")
        retries = s.statistics().retries
    assert (TaskStatus.SUCCEED, 2, 1) == (got.status, calls, retries)


async def test_a_media_reply_is_decided_as_a_real_one(tmp_path: pathlib.Path) -> None:
    """A media 503 is retried, then a 410 says the result expired; no file is left."""
    statuses = iter([503, 410])

    def handler(request: HTTPRequest) -> HTTPResponse:
        if request.url == MEDIA:
            return HTTPResponse(status=next(statuses), body=b"")
        return reply(task("succeed"))

    transport = MockTransport(handler)
    async with session(transport) as s:
        done = await s.get_task("t1")
        with pytest.raises(MediaExpiredError):
            await s.download(done, tmp_path / "v.mp4")
    left = [path async for path in anyio.Path(tmp_path).iterdir()]
    assert ([], 3) == (left, len(transport.requests))


async def test_a_resumed_download_asks_for_the_rest(tmp_path: pathlib.Path) -> None:
    """A body shorter than announced is resumed with Range from the bytes kept."""
    ranges: list[str | None] = []

    def handler(request: HTTPRequest) -> HTTPResponse:
        if request.url != MEDIA:
            return reply(task("succeed"))
        asked = dict(request.headers).get("Range")
        ranges.append(asked)
        size = str(len(VIDEO))
        if asked is None:  # half the body, then the connection "breaks"
            return HTTPResponse(
                status=200, body=VIDEO[:1000], headers={"Content-Length": size, "ETag": '"a"'}
            )
        first = int(asked.removeprefix("bytes=").rstrip("-"))
        return HTTPResponse(
            status=206,
            body=VIDEO[first:],
            headers={"Content-Range": f"bytes {first}-{len(VIDEO) - 1}/{size}"},
        )

    async with session(MockTransport(handler)) as s:
        path = await s.download(await s.get_task("t1"), tmp_path / "v.mp4")
    assert (VIDEO, [None, "bytes=1000-"]) == (path.read_bytes(), ranges)


def test_transport_is_type_checked_and_excludes_aiohttp_options() -> None:
    """Anything but a Transport is refused; aiohttp's options make no sense with one."""
    with pytest.raises(TypeError, match="transport must be a Transport"):
        KlingSession("key", transport=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http_session and trace_configs"):
        KlingSession("key", transport=MockTransport(Kling()), trace_configs=[aiohttp.TraceConfig()])


async def test_max_response_bytes_holds_through_a_transport() -> None:
    """A reply over ``max_response_bytes`` is refused as over aiohttp, whatever the transport."""
    padded = {"code": 0, "message": "SUCCEED", "request_id": "r1", "data": task("succeed")}
    body = json.dumps({**padded, "pad": "x" * 5000}).encode()
    transport = MockTransport(lambda request: HTTPResponse(status=200, body=body))
    async with KlingSession(
        "key",
        base_url=BASE,
        transport=transport,
        list_refresh=False,
        retry_policy=RetryPolicy.instant(),
        max_response_bytes=1000,
    ) as s:
        with pytest.raises(ResponseDecodeError, match="larger than 1000 bytes") as caught:
            await s.get_task("t1")
    assert (200, False) == (caught.value.status, caught.value.is_json)


async def test_a_transports_own_exception_during_a_create_is_logged_as_in_doubt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transport of the caller's that raises its own exception while a create is on the
    wire: the exception reaches the caller as raised, and the create, which may have made a
    task, is logged as in doubt (as a cancelled one is)."""

    class Broken(Exception):
        pass

    def handler(request: HTTPRequest) -> HTTPResponse:
        raise Broken("the handler's own failure")

    with caplog.at_level("WARNING", logger="kling_async"):
        async with session(MockTransport(handler)) as kling:
            with pytest.raises(Broken):
                await kling.extend("vid-1")
    assert any("outcome was unknown" in record.getMessage() for record in caplog.records)
