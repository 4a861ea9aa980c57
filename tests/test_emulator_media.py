"""Emulator specification: the media host's videos, Range requests and media faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
import yarl

from kling_async.testing import Fault, KlingEmulator

from .test_emulator import AUTH, create, query

pytestmark = pytest.mark.anyio

SIZE = 256 * 1024


@attrs.frozen
class Download:
    status: int
    headers: Any
    body: bytes


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Download:
    async with http.get(url, headers=headers or {}) as resp:
        return Download(resp.status, resp.headers, await resp.read())


async def raw_get(url: str, headers: str = "") -> tuple[bytes, bytes]:
    """GET over a bare socket: the header block and every body byte before the server closed."""
    parts = yarl.URL(url)
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    writer.write(
        f"GET {parts.raw_path} HTTP/1.1\r\nHost: {parts.host}\r\n{headers}\r\n".encode("latin-1")
    )
    data = await reader.read()  # until EOF: the server closes the connection
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def finished_video(http: aiohttp.ClientSession, emu: KlingEmulator) -> dict[str, Any]:
    task_id = (await create(http, emu.base_url, video_id="parent-1")).body["data"]["task_id"]
    for _ in range(3):
        task: dict[str, Any] = (await query(http, emu.base_url, task_id)).body["data"]
    return task


def video_url(emu: KlingEmulator, video_id: str = "v1") -> str:
    return f"{emu.media_url}/media/{video_id}.mp4"


# ---------------------------------------------------------------------------- bytes


async def test_task_urls_point_at_the_media_host(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Parent and result video URLs are /media/<id>.mp4 on the media host, not the API host."""
    task = await finished_video(http, emu)
    (video,) = task["task_result"]["videos"]
    assert [video_url(emu, "parent-1"), video_url(emu, video["id"])] == [
        task["task_info"]["parent_video"]["url"],
        video["url"],
    ]
    assert emu.media_url != emu.base_url


async def test_media_serves_deterministic_bytes(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """A video is media_bytes long, an MP4 by its first box, and the same for the same id."""
    got = await fetch(http, video_url(emu))
    assert (200, "video/mp4", str(SIZE), "bytes") == (
        got.status,
        got.headers["Content-Type"],
        got.headers["Content-Length"],
        got.headers["Accept-Ranges"],
    )
    assert emu.media_content("v1") == got.body
    assert (SIZE, b"ftyp", b"mdat") == (len(got.body), got.body[4:8], got.body[28:32])
    async with KlingEmulator() as other:
        assert got.body == other.media_content("v1") != other.media_content("v2")


async def test_media_size_is_configurable(http: aiohttp.ClientSession) -> None:
    """media_bytes sets the size of every video."""
    async with KlingEmulator(media_bytes=1000) as emu:
        assert 1000 == len((await fetch(http, video_url(emu))).body)
    async with KlingEmulator(media_bytes=0) as emu:
        assert b"" == (await fetch(http, video_url(emu))).body
    with pytest.raises(ValueError, match="media_bytes"):
        KlingEmulator(media_bytes=-1)


async def test_head_has_the_headers_only(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """HEAD answers the length and type without a body."""
    async with http.head(video_url(emu)) as resp:
        assert (200, str(SIZE), b"") == (
            resp.status,
            resp.headers["Content-Length"],
            await resp.read(),
        )


async def test_no_credentials_reach_the_media_host(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Media requests are logged with their headers, so a test can check no key was sent."""
    await fetch(http, video_url(emu))
    await fetch(http, video_url(emu), headers=AUTH)
    media = [r for r in emu.requests if r.route == "media"]
    assert [False, True] == ["Authorization" in r.headers for r in media]
    assert ["/media/v1.mp4"] * 2 == [r.path for r in media]


async def test_media_host_serves_media_only(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """The media host does not answer the API."""
    got = await fetch(http, emu.media_url + "/v1/videos/video-extend", headers=AUTH)
    assert (404, "other") == (got.status, emu.requests[-1].route)


# ---------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=1000-", 1000, SIZE - 1),
        ("bytes=0-", 0, SIZE - 1),
        ("bytes=10-19", 10, 19),
        ("bytes=10-999999999", 10, SIZE - 1),
        ("bytes=-100", SIZE - 100, SIZE - 1),
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
    ],
)
async def test_range_gives_206(
    emu: KlingEmulator, http: aiohttp.ClientSession, header: str, first: int, last: int
) -> None:
    """A satisfiable single range gets 206, its Content-Range and exactly those bytes."""
    got = await fetch(http, video_url(emu), headers={"Range": header})
    assert (206, f"bytes {first}-{last}/{SIZE}", str(last - first + 1)) == (
        got.status,
        got.headers["Content-Range"],
        got.headers["Content-Length"],
    )
    assert emu.media_content("v1")[first : last + 1] == got.body


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", "bytes=999999999-", "bytes=-0"])
async def test_range_past_the_end_is_416(
    emu: KlingEmulator, http: aiohttp.ClientSession, header: str
) -> None:
    """A range that starts at or past the end gets 416 with Content-Range bytes */size."""
    got = await fetch(http, video_url(emu), headers={"Range": header})
    assert (416, f"bytes */{SIZE}") == (got.status, got.headers["Content-Range"])


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-", "bytes=9-3", "bytes=-"])
async def test_ranges_not_honoured_give_the_whole_video(
    emu: KlingEmulator, http: aiohttp.ClientSession, header: str
) -> None:
    """Multi-ranges, other units and malformed ranges are ignored: 200 with the whole body."""
    got = await fetch(http, video_url(emu), headers={"Range": header})
    assert (200, SIZE) == (got.status, len(got.body))


async def test_if_range_with_another_etag_gives_the_whole_video(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """If-Range with the current ETag resumes; with another one the whole video comes back."""
    etag = (await fetch(http, video_url(emu))).headers["ETag"]
    same = await fetch(http, video_url(emu), headers={"Range": "bytes=5-", "If-Range": etag})
    other = await fetch(http, video_url(emu), headers={"Range": "bytes=5-", "If-Range": '"x"'})
    assert (206, 200) == (same.status, other.status)


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "code"), [(403, "AccessDenied"), (404, "NoSuchKey"), (410, "ObjectExpired")]
)
async def test_http_fault_on_media(
    emu: KlingEmulator, http: aiohttp.ClientSession, status: int, code: str
) -> None:
    """Fault.http on media answers that status with a storage-style XML error, once."""
    emu.inject(Fault.http(status), route="media")
    got = await fetch(http, video_url(emu))
    assert (status, "application/xml") == (got.status, got.headers["Content-Type"])
    assert f"<Code>{code}</Code>".encode() in got.body
    assert 200 == (await fetch(http, video_url(emu))).status


async def test_cut_announces_the_whole_and_sends_part(emu: KlingEmulator) -> None:
    """Fault.cut sends the full Content-Length, then closes after part of the body."""
    emu.inject(Fault.cut(), route="media")
    emu.inject(Fault.cut(after=1000), route="media")
    emu.inject(Fault.cut(after=10**9), route="media")
    halves = [await raw_get(video_url(emu)) for _ in range(3)]
    assert [f"Content-Length: {SIZE}".encode() in head for head, _ in halves] == [True] * 3
    content = emu.media_content("v1")
    assert [content[: SIZE // 2], content[:1000], content[: SIZE - 1]] == [b for _, b in halves]
    assert [200, 200, 200] == [r.status for r in emu.requests]


async def test_cut_of_a_range(emu: KlingEmulator) -> None:
    """A cut resumed download is cut within its 206 body."""
    emu.inject(Fault.cut(after=10), route="media")
    head, body = await raw_get(video_url(emu), headers="Range: bytes=100-\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    assert f"Content-Length: {SIZE - 100}".encode() in head
    assert emu.media_content("v1")[100:110] == body


async def test_cut_is_a_payload_error_to_aiohttp(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """To an aiohttp client a cut body is a ClientPayloadError after a 200."""
    emu.inject(Fault.cut(), route="media")
    async with http.get(video_url(emu)) as resp:
        assert (200, SIZE) == (resp.status, resp.content_length)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_chunked_has_no_content_length(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Fault.chunked sends the whole video chunked, without Content-Length."""
    emu.inject(Fault.chunked(), route="media")
    got = await fetch(http, video_url(emu))
    assert (200, None, "chunked") == (
        got.status,
        got.headers.get("Content-Length"),
        got.headers.get("Transfer-Encoding"),
    )
    assert emu.media_content("v1") == got.body


async def test_range_ignored(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Fault.range_ignored answers a Range request with 200, the whole body, no Accept-Ranges."""
    emu.inject(Fault.range_ignored(), route="media")
    got = await fetch(http, video_url(emu), headers={"Range": "bytes=1000-"})
    assert (200, SIZE, None, None) == (
        got.status,
        len(got.body),
        got.headers.get("Accept-Ranges"),
        got.headers.get("Content-Range"),
    )


async def test_drop_and_delay_on_media(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """drop closes a media request unanswered; delay holds it, then serves it."""
    emu.inject(Fault.drop(), route="media", times=2)  # aiohttp retries a GET once
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(http, video_url(emu))
    emu.inject(Fault.delay(0.05), route="media")
    started = time.monotonic()
    assert 200 == (await fetch(http, video_url(emu))).status
    assert time.monotonic() - started >= 0.05


async def test_media_faults_stay_on_media(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """route="media" faults only media; route="any" never faults media."""
    emu.inject(Fault.http(500))
    emu.inject(Fault.http(404), route="media")
    assert 404 == (await fetch(http, video_url(emu))).status
    assert 500 == (await create(http, emu.base_url)).status
    assert 200 == (await fetch(http, video_url(emu))).status
