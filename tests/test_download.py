"""Specification of KlingSession.download(): streaming, atomic, resumable, no credentials."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anyio
import pytest

import kling_async
from kling_async import (
    DownloadError,
    InvalidArgumentError,
    KlingSession,
    MediaExpiredError,
    RetryPolicy,
    SessionClosedError,
    Task,
    TaskResult,
    TaskStatus,
    Video,
)
from kling_async._download import _Progress
from kling_async._media import file_name, redirect_target
from kling_async._urls import redact
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

pytestmark = pytest.mark.anyio

SIZE = 256 * 1024
BIG = 8 * 1024 * 1024
CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")


def video(emu: KlingEmulator, video_id: str = "v1", *, query: str = "") -> Video:
    return Video(id=video_id, url=f"{emu.media_url}/media/{video_id}.mp4{query}")


def media_requests(emu: KlingEmulator) -> list[Any]:
    return [r for r in emu.requests if r.route == "media"]


def files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


@pytest.fixture
async def big_emu() -> AsyncIterator[KlingEmulator]:
    """An emulator whose videos take many reads, so that a test can act mid-body."""
    async with KlingEmulator(media_bytes=BIG) as emulator:
        yield emulator


# ---------------------------------------------------------------------------- whole files


async def test_downloads_a_video_to_a_file_path(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """The file holds the media host's bytes, under the name asked for, and nothing else."""
    dest = tmp_path / "out.mp4"
    path = await session.download(video(emu), dest)
    assert (dest, emu.media_content("v1")) == (path, path.read_bytes())
    assert ["out.mp4"] == files(tmp_path)
    assert 1 == emu.count("media")


async def test_accepts_a_str_path(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """``dest`` may be a str; the returned path is a pathlib.Path."""
    path = await session.download(video(emu), str(tmp_path / "out.mp4"))
    assert tmp_path / "out.mp4" == path


async def test_into_a_directory_names_the_file_after_the_video(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """An existing directory gets ``<video id><URL's extension>``."""
    path = await session.download(video(emu, "v7"), tmp_path)
    assert (tmp_path / "v7.mp4", emu.media_content("v7")) == (path, path.read_bytes())


async def test_the_extension_comes_from_the_url(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A URL ending in ``.webm`` makes a ``.webm`` file; the query string does not count."""
    clip = Video(id="clip", url=f"{emu.media_url}/media/clip.webm?sig=abc")
    path = await session.download(clip, tmp_path)
    assert (tmp_path / "clip.webm", emu.media_content("clip.webm")) == (path, path.read_bytes())


async def test_downloads_a_succeeded_tasks_first_video(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A Task gives its first result video, end to end through extend and wait."""
    task = await (await session.extend("parent-1"))
    assert task.video is not None
    path = await session.download(task, tmp_path)
    assert (tmp_path / f"{task.video.id}.mp4", emu.media_content(task.video.id)) == (
        path,
        path.read_bytes(),
    )


async def test_replaces_an_existing_file(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """An existing file under the final name is replaced whole."""
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"old content, longer than nothing")
    await session.download(video(emu), dest)
    assert emu.media_content("v1") == dest.read_bytes()


async def test_without_content_length(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A chunked body with no Content-Length downloads whole; progress knows the size at the end."""
    emu.inject(Fault.chunked(), route="media")
    calls: list[tuple[int, int | None]] = []
    path = await session.download(video(emu), tmp_path, progress=lambda *c: calls.append(c))
    assert emu.media_content("v1") == path.read_bytes()
    assert "Content-Length" not in media_requests(emu)[0].headers
    assert (SIZE, SIZE) == calls[-1]
    assert {None} == {total for _, total in calls[:-1]}


async def test_an_empty_video(tmp_path: pathlib.Path) -> None:
    """A zero-byte video makes a zero-byte file."""
    async with KlingEmulator(media_bytes=0) as emu, official(emu) as session:
        path = await session.download(video(emu), tmp_path)
        assert b"" == path.read_bytes()


# ---------------------------------------------------------------------------- resuming


async def test_a_cut_off_body_is_resumed_with_range(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """After the connection drops mid-body the rest is asked for with Range and If-Range."""
    emu.inject(Fault.cut(after=64 * 1024), route="media")
    path = await session.download(video(emu), tmp_path)
    first, second = media_requests(emu)
    assert emu.media_content("v1") == path.read_bytes()
    assert (None, "bytes=65536-", 206) == (
        first.headers.get("Range"),
        second.headers.get("Range"),
        second.status,
    )
    assert second.headers["If-Range"].startswith('"')  # the strong ETag the first reply had
    assert ["v1.mp4"] == files(tmp_path)


async def test_cut_off_twice_resumes_twice(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """Each resume starts where the file ends; a resume that breaks off is resumed again."""
    emu.inject(Fault.cut(after=50_000), route="media")
    emu.inject(Fault.cut(after=50_000), route="media")
    path = await session.download(video(emu), tmp_path)
    assert emu.media_content("v1") == path.read_bytes()
    assert [None, "bytes=50000-", "bytes=100000-"] == [
        r.headers.get("Range") for r in media_requests(emu)
    ]


async def test_progress_renews_the_retry_budget(emu: KlingEmulator, tmp_path: pathlib.Path) -> None:
    """More cuts than attempts still finish, as long as each attempt brings more bytes."""
    for _ in range(5):
        emu.inject(Fault.cut(after=20_000), route="media")
    async with official(emu, retry_policy=RetryPolicy.instant(attempts=2)) as session:
        path = await session.download(video(emu), tmp_path)
    assert emu.media_content("v1") == path.read_bytes()
    assert 6 == emu.count("media")


async def test_a_200_to_a_range_request_starts_over(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A server that ignores Range sends the whole body again: the file restarts from 0."""
    emu.inject(Fault.cut(after=64 * 1024), route="media")
    emu.inject(Fault.range_ignored(), route="media")
    path = await session.download(video(emu), tmp_path)
    assert emu.media_content("v1") == path.read_bytes()
    assert [("bytes=65536-", 200)] == [
        (r.headers.get("Range"), r.status) for r in media_requests(emu)[1:]
    ]


async def test_a_416_to_a_range_request_starts_over(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """416 Range Not Satisfiable for what the file lacks: download it again from the start."""
    emu.inject(Fault.cut(after=64 * 1024), route="media")
    emu.inject(
        Fault.raw(416, b"", content_type="text/plain", headers={"Content-Range": "bytes */9"}),
        route="media",
    )
    path = await session.download(video(emu), tmp_path)
    assert emu.media_content("v1") == path.read_bytes()
    assert [None, "bytes=65536-", None] == [r.headers.get("Range") for r in media_requests(emu)]


async def test_a_dropped_connection_is_retried(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """No reply at all, then a whole one: the download succeeds on a retry."""
    emu.inject(Fault.drop(), route="media", times=2)  # aiohttp itself repeats a GET once
    path = await session.download(video(emu), tmp_path)
    assert emu.media_content("v1") == path.read_bytes()
    assert (3, 1) == (emu.count("media"), session.statistics().retries)


async def test_a_503_is_retried(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A transient 5xx from the CDN is retried with the session's backoff."""
    emu.inject(Fault.http(503), route="media")
    path = await session.download(video(emu), tmp_path)
    assert emu.media_content("v1") == path.read_bytes()
    assert [503, 200] == [r.status for r in media_requests(emu)]


async def test_a_long_retry_after_fails_at_once(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A Retry-After over the policy's cap is not waited out."""
    emu.inject(Fault.http(503, retry_after=3600), route="media")
    with pytest.raises(DownloadError, match="3600 s"):
        await session.download(video(emu), tmp_path)
    assert 1 == emu.count("media")


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_gone_media_raises_media_expired(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path, status: int
) -> None:
    """403/404/410 from the CDN say the result expired (30 days), at once, leaving no file."""
    emu.inject(Fault.http(status), route="media")
    with pytest.raises(MediaExpiredError) as caught:
        await session.download(video(emu), tmp_path)
    assert (status, f"{emu.media_url}/media/v1.mp4", 0, "v1") == (
        caught.value.status,
        caught.value.url,
        caught.value.received,
        caught.value.video_id,
    )
    assert "30 days" in str(caught.value)
    assert ([], 1) == (files(tmp_path), emu.count("media"))


async def test_a_persistent_500_raises_download_error_after_the_retries(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A 500 that never goes away is tried ``attempts`` times, then DownloadError."""
    emu.inject(Fault.http(500), route="media", times=10)
    with pytest.raises(DownloadError) as caught:
        await session.download(video(emu), tmp_path)
    assert not isinstance(caught.value, MediaExpiredError)
    assert (500, RetryPolicy().attempts, []) == (
        caught.value.status,
        emu.count("media"),
        files(tmp_path),
    )


async def test_a_client_error_is_not_retried(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A 400 will not change by asking again."""
    emu.inject(Fault.http(400), route="media")
    with pytest.raises(DownloadError) as caught:
        await session.download(video(emu), tmp_path)
    assert (400, 1) == (caught.value.status, emu.count("media"))


async def test_broken_off_for_good_reports_the_bytes_received(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A resume that keeps failing ends in DownloadError with what had arrived; no file stays."""
    emu.inject(Fault.cut(after=10_000), route="media")
    emu.inject(Fault.drop(), route="media", times=10)
    with pytest.raises(DownloadError) as caught:
        await session.download(video(emu), tmp_path)
    assert (10_000, None, []) == (caught.value.received, caught.value.status, files(tmp_path))


async def test_errors_never_show_the_query_string(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A signed URL's query string stays out of messages, reprs and the cause chain."""
    secret = "?Signature=TOPSECRET&Expires=1"
    emu.inject(Fault.drop(), route="media", times=10)
    with pytest.raises(DownloadError) as dropped:
        await session.download(video(emu, query=secret), tmp_path)
    emu.inject(Fault.http(403), route="media")
    with pytest.raises(MediaExpiredError) as expired:
        await session.download(video(emu, query=secret), tmp_path)
    for error in (dropped.value, expired.value):
        assert f"{emu.media_url}/media/v1.mp4" == error.url
        for link in chain(error):
            assert "TOPSECRET" not in f"{link} {link!r}"


# ---------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("factory", [official, gateway], ids=["jwt", "api-key"])
async def test_no_credential_reaches_the_media_host(
    emu: KlingEmulator, tmp_path: pathlib.Path, factory: Any
) -> None:
    """The API gets Authorization; the media host, resumes included, gets no credential."""
    emu.inject(Fault.cut(), route="media")
    async with factory(emu) as session:
        task = await (await session.extend("parent-1"))
        await session.download(task, tmp_path)
    media = media_requests(emu)
    assert 2 == len(media)
    assert [] == [(name, r.path) for r in media for name in CREDENTIAL_HEADERS if name in r.headers]
    assert all("Authorization" in r.headers for r in emu.requests if r.route != "media")


async def test_a_borrowed_sessions_defaults_are_not_sent_to_the_media_host(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Default headers and cookies of a borrowed aiohttp session stay off media requests."""
    defaults = {"Authorization": "Bearer borrowed", "Proxy-Authorization": "x", "X-Team": "a"}
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(headers=defaults, cookie_jar=jar) as http:
        http.cookie_jar.update_cookies({"session": "cookie-secret"})
        async with official(emu, http_session=http) as session:
            await session.download(video(emu), tmp_path)
    (media,) = media_requests(emu)
    assert [] == [name for name in (*CREDENTIAL_HEADERS, "X-Team") if name in media.headers]


async def test_redirects_are_followed_without_credentials(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """A CDN redirect is followed, with the same credential-free headers."""
    target = f"{emu.media_url}/media/elsewhere.mp4"
    emu.inject(Fault.raw(302, b"", headers={"Location": target}), route="media")
    path = await session.download(video(emu), tmp_path)
    assert emu.media_content("elsewhere") == path.read_bytes()
    assert ["/media/v1.mp4", "/media/elsewhere.mp4"] == [r.path for r in media_requests(emu)]
    assert not any("Authorization" in r.headers for r in media_requests(emu))


async def test_too_many_redirects(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """More than five redirects in a row is a DownloadError, not a loop."""
    loop = Fault.raw(302, b"", headers={"Location": "/media/v1.mp4"})
    emu.inject(loop, route="media", times=6)
    with pytest.raises(DownloadError, match="redirected more than 5 times"):
        await session.download(video(emu), tmp_path)
    assert (6, []) == (emu.count("media"), files(tmp_path))


def test_redirect_targets() -> None:
    """Relative locations resolve; https to http, other schemes and user info are refused."""
    here = "https://cdn.example/a/b.mp4?sig=1"
    assert "https://cdn.example/a/c.mp4" == redirect_target(here, "c.mp4")
    assert "https://edge.example/x.mp4?s=2" == redirect_target(here, "//edge.example/x.mp4?s=2")
    assert "http://b.example/y" == redirect_target("http://a.example/", "http://b.example/y#f")
    for location in ("http://cdn.example/a.mp4", "ftp://cdn.example/a", "https://u:p@x.example/"):
        with pytest.raises(Exception, match="redirect"):
            redirect_target(here, location)


def test_redact_drops_query_fragment_and_user_info() -> None:
    """What error messages show of a URL."""
    assert "https://cdn.example:8443/a.mp4" == redact("https://u:p@cdn.example:8443/a.mp4?s=1#f")


def test_file_names_stay_inside_the_directory() -> None:
    """A hostile or odd video id cannot name a file elsewhere or a hidden one."""
    url = "https://cdn.example/v.mp4"
    assert [
        "abc-1_2.mp4",
        "_.._etc_passwd.mp4",
        "video.mp4",
        "a_b.mov",
        "x.mp4",
    ] == [
        file_name("abc-1_2", url),
        file_name("/../etc/passwd", url),
        file_name("..", url),
        file_name("a b", "https://cdn.example/a.MOV"),
        file_name("x", "https://cdn.example/noext"),
    ]


# ---------------------------------------------------------------------------- validation


async def test_validation_happens_before_any_io(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """Bad arguments raise builtins and send nothing, create nothing."""
    good = video(emu)
    running = Task(task_id="1", status=TaskStatus.PROCESSING)
    no_video = Task(task_id="2", status=TaskStatus.SUCCEED, result=TaskResult(videos=()))

    async def noop_async(done: int, total: int | None) -> None:
        pass

    cases: list[tuple[type[BaseException], Any, Any, Any]] = [
        (TypeError, "v1", tmp_path, None),
        (ValueError, running, tmp_path, None),
        (ValueError, no_video, tmp_path, None),
        (InvalidArgumentError, Video(id="v", url=""), tmp_path, None),
        (InvalidArgumentError, Video(id="v", url="ftp://cdn.example/v.mp4"), tmp_path, None),
        (InvalidArgumentError, Video(id="v", url="file:///etc/passwd"), tmp_path, None),
        (InvalidArgumentError, Video(id="v", url="https://u:p@cdn.example/v.mp4"), tmp_path, None),
        (InvalidArgumentError, Video(id="v", url="https://cdn.example/a b.mp4"), tmp_path, None),
        (TypeError, good, 42, None),
        (InvalidArgumentError, good, "", None),
        (TypeError, good, tmp_path, "not callable"),
        (TypeError, good, tmp_path, noop_async),
        (FileNotFoundError, good, tmp_path / "missing" / "out.mp4", None),
    ]
    for exc, item, dest, progress in cases:
        with pytest.raises(exc):
            await session.download(item, dest, progress=progress)
    assert (0, []) == (emu.count("media"), files(tmp_path))


async def test_a_closed_or_unopened_session(emu: KlingEmulator, tmp_path: pathlib.Path) -> None:
    """Unopened: RuntimeError; closed: SessionClosedError, as for every other call."""
    session = official(emu)
    with pytest.raises(RuntimeError, match="open the session first"):
        await session.download(video(emu), tmp_path)
    async with session:
        pass
    with pytest.raises(SessionClosedError):
        await session.download(video(emu), tmp_path)
    assert 0 == emu.count("media")


# ---------------------------------------------------------------------------- cancel, close


async def test_a_cancel_mid_download_leaves_no_file(
    big_emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Cancelled half-way, the download removes its temporary file and leaves nothing."""
    async with official(big_emu) as session:
        with anyio.CancelScope() as scope:

            def progress(done: int, total: int | None) -> None:
                if 0 < done < BIG:
                    scope.cancel()

            await session.download(video(big_emu), tmp_path, progress=progress)
        assert scope.cancelled_caught
        assert (0, []) == (session.statistics().in_flight, files(tmp_path))


async def test_an_exception_in_progress_propagates_and_leaves_no_file(
    big_emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The callback's own exception comes out of download(); the temporary file is gone."""

    def progress(done: int, total: int | None) -> None:
        if done > 0:
            raise KeyError("stop")

    async with official(big_emu) as session:
        with pytest.raises(KeyError, match="stop"):
            await session.download(video(big_emu), tmp_path, progress=progress)
    assert [] == files(tmp_path)


@pytest.mark.parametrize("borrowed", [False, True], ids=["owned", "borrowed"])
async def test_closing_the_session_stops_a_download(
    big_emu: KlingEmulator, tmp_path: pathlib.Path, borrowed: bool
) -> None:
    """aclose() ends a download on the wire at once: SessionClosedError, no file."""
    started = anyio.Event()
    failure: list[BaseException] = []

    def progress(done: int, total: int | None) -> None:
        if done > 0:
            started.set()

    async with aiohttp.ClientSession() as http:
        session = official(big_emu, http_session=http if borrowed else None)
        async with session:

            async def fetch() -> None:
                try:
                    await session.download(video(big_emu), tmp_path, progress=progress)
                except SessionClosedError as exc:
                    failure.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(fetch)
                await started.wait()
                await session.aclose()
    assert (1, []) == (len(failure), files(tmp_path))


# ---------------------------------------------------------------------------- progress


async def test_progress_is_bounded_and_monotonic(
    big_emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """At most one call per whole percent (plus timed ones), never backwards, ending whole."""
    calls: list[tuple[int, int | None]] = []
    async with official(big_emu) as session:
        await session.download(video(big_emu), tmp_path, progress=lambda *c: calls.append(c))
    done = [d for d, _ in calls]
    assert ((0, BIG), (BIG, BIG)) == (calls[0], calls[-1])
    assert sorted(done) == done
    assert len(set(done)) == len(done)
    assert len(calls) <= 102 < BIG // (64 * 1024)
    assert {BIG} == {total for _, total in calls}


async def test_progress_does_not_go_back_when_a_download_starts_over(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """After a restart from 0 the calls resume once they pass what was already reported."""
    emu.inject(Fault.cut(after=100_000), route="media")
    emu.inject(Fault.range_ignored(), route="media")
    calls: list[tuple[int, int | None]] = []
    await session.download(video(emu), tmp_path, progress=lambda *c: calls.append(c))
    done = [d for d, _ in calls]
    assert sorted(done) == done
    assert (SIZE, SIZE) == calls[-1]


def test_progress_rate_limit_with_a_fake_clock() -> None:
    """Without a total, calls come at most every 100 ms; with one, also at each 1 %."""
    now = [0.0]
    calls: list[tuple[int, int | None]] = []
    unknown = _Progress(lambda *c: calls.append(c), lambda: now[0])
    for done in range(0, 1000, 10):  # 100 updates within 99 ms: one call
        now[0] = done / 10_000
        unknown.update(done, None)
    now[0] = 0.2
    unknown.update(1000, None)
    unknown.update(1000, 1000, final=True)
    assert [(0, None), (1000, None), (1000, 1000)] == calls
    calls.clear()
    known = _Progress(lambda *c: calls.append(c), lambda: 0.0)  # the clock stands still
    for done in range(0, 10_001, 10):
        known.update(done, 10_000)
    assert 101 == len(calls)


# ---------------------------------------------------------------------------- limits


async def test_parallel_downloads_share_max_in_flight(tmp_path: pathlib.Path) -> None:
    """gather() of 100 downloads never has more than max_in_flight connections at once."""
    opened = 0
    peak = 0

    async def on_create(*_: object) -> None:
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(limit=0)  # no pool limit: only the session's bounds it
    async with (
        KlingEmulator(media_bytes=32 * 1024) as emu,
        aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http,
        official(emu, http_session=http, max_in_flight=4) as session,
    ):

        def progress(done: int, total: int | None) -> None:
            nonlocal peak
            peak = max(peak, session.statistics().in_flight)

        paths = await kling_async_gather(
            session.download(video(emu, f"v{i}"), tmp_path, progress=progress) for i in range(100)
        )
    assert (4, 100, 100) == (peak, emu.count("media"), len(set(paths)))
    assert 1 <= opened <= 4
    assert all(p.read_bytes() == emu.media_content(p.stem) for p in paths)


async def kling_async_gather(coroutines: Iterator[Any]) -> list[pathlib.Path]:
    """asyncio.gather, spelled for anyio: run them all at once, results in order."""
    results: dict[int, pathlib.Path] = {}

    async def run(index: int, coroutine: Any) -> None:
        results[index] = await coroutine

    async with anyio.create_task_group() as group:
        for index, coroutine in enumerate(coroutines):
            group.start_soon(run, index, coroutine)
    return [results[i] for i in range(len(results))]


# ---------------------------------------------------------------------------- crash

CHILD = """
import sys, time
import anyio
from kling_async import KlingSession, RetryPolicy, Video

async def main(media_url, dest):
    def progress(done, total):
        if done >= 2 * 1024 * 1024:
            print("mid-download", flush=True)
            time.sleep(60)  # killed here, with half the video on disk

    async with KlingSession("key", base_url=media_url, retry_policy=RetryPolicy.instant()) as s:
        video = Video(id="crash", url=media_url + "/media/crash.mp4")
        await s.download(video, dest, progress=progress)

anyio.run(main, sys.argv[1], sys.argv[2], backend="asyncio")
"""


async def test_a_killed_process_leaves_no_file_under_the_final_name(
    big_emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """SIGKILL mid-download: only the hidden .part file exists, never a partial final file."""
    if sys.platform == "win32":  # pragma: no cover - SIGKILL semantics
        pytest.skip("POSIX kill semantics")
    root = pathlib.Path(kling_async.__file__).parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    process = await anyio.open_process(
        [sys.executable, "-c", CHILD, big_emu.media_url, str(tmp_path)], env=env
    )
    async with process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(30):
                seen = b""
                while b"mid-download" not in seen:
                    seen += await process.stdout.receive()
        finally:
            process.kill()
            await process.wait()
    names = files(tmp_path)
    assert not (tmp_path / "crash.mp4").exists()
    (part,) = names
    assert (".crash.mp4.", ".part") == (part[:11], part[-5:])
    kept = (tmp_path / part).read_bytes()
    assert 0 < len(kept) < BIG
    assert big_emu.media_content("crash")[: len(kept)] == kept


async def test_a_cancel_while_the_temporary_file_is_made_leaves_no_file(
    emu: KlingEmulator, session: KlingSession, tmp_path: pathlib.Path
) -> None:
    """Cancelled before anything is sent, the download still removes the file it created."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await session.download(video(emu), tmp_path)
    assert (True, [], 0) == (scope.cancelled_caught, files(tmp_path), emu.count("media"))
