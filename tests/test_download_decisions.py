"""What a media host's reply means for a download (``_media``): value tests, no event loop."""

from __future__ import annotations

import datetime as dt

import pytest

from kling_async import DownloadPolicy, Task, TaskStatus, Video
from kling_async._media import (
    EXPIRED_MESSAGE,
    Asked,
    Decision,
    Expired,
    Fail,
    Follow,
    Retry,
    Whole,
    Write,
    body_shortfall,
    content_range,
    decide,
    file_name,
    media_of,
    refused_host,
    too_big,
    unsatisfied_size,
    validator,
)
from kling_async.models import TaskResult

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
URL = "https://cdn.example.com/media/v1.mp4"
CAP = 1000
FRESH = Asked(url=URL, max_bytes=CAP)
RESUMING = Asked(url=URL, have=100, ranged=True, validator='"e1"', max_bytes=CAP)

DECISIONS: list[tuple[str, int, dict[str, str], Asked, Decision]] = [
    (
        "a whole body from the start",
        200,
        {"Content-Length": "500", "ETag": '"e1"'},
        FRESH,
        Write(restart=False, end=500, total=500, ranges=True, validator='"e1"'),
    ),
    (
        "no length: the body ends where it ends",
        200,
        {},
        FRESH,
        Write(restart=False, end=None, total=None, ranges=True, validator=None),
    ),
    (
        "a host that says it cannot resume",
        200,
        {"Accept-Ranges": "none"},
        FRESH,
        Write(restart=False, end=None, total=None, ranges=False, validator=None),
    ),
    (
        "a 200 to a Range from a host that ignored it: start over, resume no more",
        200,
        {"Content-Length": "500", "ETag": '"e1"'},
        RESUMING,
        Write(restart=True, end=500, total=500, ranges=False, validator='"e1"'),
    ),
    (
        "a 200 to a Range that ignored it but offers bytes ranges: start over, resume later",
        200,
        {"Content-Length": "500", "accept-ranges": "bytes"},
        RESUMING,
        Write(restart=True, end=500, total=500, ranges=True, validator=None),
    ),
    (
        "a 200 to a Range because the video changed (a new validator): start over",
        200,
        {"Content-Length": "500", "ETag": '"e2"'},
        RESUMING,
        Write(restart=True, end=500, total=500, ranges=True, validator='"e2"'),
    ),
    (
        "the announced length is over the cap",
        200,
        {"Content-Length": "1001"},
        FRESH,
        Fail(reason=too_big(1001, "announced", CAP)),
    ),
    (
        "the range asked for",
        206,
        {"Content-Range": "bytes 100-499/500"},
        RESUMING,
        Write(restart=False, end=500, total=500, validator='"e1"'),
    ),
    (
        "the range asked for, of unknown total",
        206,
        {"content-range": "bytes 100-499/*"},
        RESUMING,
        Write(restart=False, end=500, total=None, validator='"e1"'),
    ),
    (
        "another range than asked: retry, asking for the whole body",
        206,
        {"Content-Range": "bytes 0-499/500"},
        RESUMING,
        Retry(reason="the media host answered another range than asked", ranges=False),
    ),
    (
        "a range without Content-Range",
        206,
        {},
        RESUMING,
        Retry(reason="the media host answered another range than asked", ranges=False),
    ),
    (
        "a range whose total is over the cap",
        206,
        {"Content-Range": "bytes 100-199/5000"},
        RESUMING,
        Fail(reason=too_big(5000, "announced", CAP)),
    ),
    (
        "a 206 nobody asked for",
        206,
        {"Content-Range": "bytes 0-9/10"},
        FRESH,
        Fail(reason="the media host answered HTTP 206"),
    ),
    (
        "416 for a file that already holds everything",
        416,
        {"Content-Range": "bytes */100"},
        RESUMING,
        Whole(total=100),
    ),
    (
        "416 for another size: start over",
        416,
        {"Content-Range": "bytes */90"},
        RESUMING,
        Retry(reason="the media host refused to resume (HTTP 416)", restart=True),
    ),
    (
        "416 without a Range asked",
        416,
        {},
        FRESH,
        Fail(reason="the media host answered HTTP 416"),
    ),
    ("expired: 403", 403, {}, FRESH, Expired()),
    ("expired: 404", 404, {}, RESUMING, Expired()),
    ("expired: 410", 410, {}, FRESH, Expired()),
    (
        "a 503 with Retry-After in seconds",
        503,
        {"Retry-After": "7"},
        FRESH,
        Retry(reason="the media host answered HTTP 503", retry_after=7.0),
    ),
    (
        "a 429 with Retry-After as a date",
        429,
        {"Retry-After": "Thu, 01 Jan 2026 00:00:30 GMT"},
        FRESH,
        Retry(reason="the media host answered HTTP 429", retry_after=30.0),
    ),
    (
        "a 408 without Retry-After",
        408,
        {},
        FRESH,
        Retry(reason="the media host answered HTTP 408"),
    ),
    ("any other status", 400, {}, FRESH, Fail(reason="the media host answered HTTP 400")),
    (
        "a compressed body is not the video",
        200,
        {"Content-Encoding": "gzip"},
        FRESH,
        Fail(reason="the media host sent a gzip-encoded body, not the video"),
    ),
    (
        "a relative redirect",
        302,
        {"Location": "/other/v1.mp4"},
        FRESH,
        Follow(url="https://cdn.example.com/other/v1.mp4"),
    ),
    (
        "a redirect to plain http is not followed",
        301,
        {"location": "http://cdn.example.com/v1.mp4"},
        FRESH,
        Fail(
            reason="the media host sent a redirect from https to plain http "
            "(http://cdn.example.com/v1.mp4), not followed"
        ),
    ),
    (
        "a redirect without Location",
        307,
        {},
        FRESH,
        Fail(reason="the media host answered HTTP 307"),
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "asked", "expected"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_what_a_reply_means(
    status: int, headers: dict[str, str], asked: Asked, expected: Decision
) -> None:
    """Each status and header set to a Range or plain request decides one thing."""
    assert expected == decide(status, headers, asked, now=NOW)


def test_expired_says_how_long_results_are_kept() -> None:
    """The expired message names Kling's 30 days and a fresh query."""
    assert "30 days" in Expired().reason == EXPIRED_MESSAGE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/100", (0, 99, 100)),
        ("bytes 100-199/*", (100, 199, None)),
        ("BYTES 5-9/10 ", (5, 9, 10)),
        ("bytes */100", None),
        ("items 0-1/2", None),
        ("", None),
        (None, None),
    ],
)
def test_content_range(value: str | None, expected: tuple[int, int, int | None] | None) -> None:
    """``Content-Range`` of a 206, or None for anything else."""
    assert expected == content_range(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("bytes */100", 100), ("bytes  */0", 0), ("bytes 0-1/2", None), (None, None)],
)
def test_unsatisfied_size(value: str | None, expected: int | None) -> None:
    """The size a 416 reports."""
    assert expected == unsatisfied_size(value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ETag": '"abc"'}, '"abc"'),
        (
            {"ETag": 'W/"abc"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"},
            "Wed, 01 Jan 2025 00:00:00 GMT",
        ),
        ({"etag": 'W/"abc"'}, None),
        ({"last-modified": "Wed, 01 Jan 2025 00:00:00 GMT"}, "Wed, 01 Jan 2025 00:00:00 GMT"),
        ({}, None),
    ],
)
def test_validator_is_a_strong_etag_else_last_modified(
    headers: dict[str, str], expected: str | None
) -> None:
    """If-Range may carry a strong ETag or a date, never a weak ETag."""
    assert expected == validator(headers)


@pytest.mark.parametrize(
    ("size", "end", "total", "expected"),
    [
        (500, 500, 500, None),
        (500, None, None, None),
        (400, 500, 500, "the body ended after 400 of 500 bytes"),
        (200, 200, 500, "the file holds 200 of 500 bytes"),
    ],
)
def test_body_shortfall(
    size: int, end: int | None, total: int | None, expected: str | None
) -> None:
    """A body that ended short of what was announced is not whole."""
    assert expected == body_shortfall(size, end, total)


@pytest.mark.parametrize(
    ("video_id", "url", "expected"),
    [
        ("v1", "https://h/media/x.MP4?sig=1", "v1.mp4"),
        ("v/../1", "https://h/x.webm", "v_.._1.webm"),
        ("..", "https://h/x", "video.mp4"),
        ("v1", "https://h/x.not-a-suffix", "v1.mp4"),
    ],
)
def test_file_name(video_id: str, url: str, expected: str) -> None:
    """A safe name from the video id and the URL's suffix (.mp4 by default)."""
    assert expected == file_name(video_id, url)


@pytest.mark.parametrize(
    ("url", "policy", "loopback", "expected"),
    [
        ("https://cdn.example.com/v.mp4", DownloadPolicy(), False, None),
        ("http://127.0.0.1/v.mp4", DownloadPolicy(), False, "127.0.0.1 is a loopback address"),
        ("http://127.0.0.1/v.mp4", DownloadPolicy(), True, None),
        ("http://localhost/v.mp4", DownloadPolicy(), False, "localhost is a loopback name"),
        ("http://10.0.0.1/v.mp4", DownloadPolicy(allow_private=True), False, None),
    ],
)
def test_refused_host(
    url: str, policy: DownloadPolicy, loopback: bool, expected: str | None
) -> None:
    """A host is refused from its spelling alone where it can be (literals, localhost)."""
    assert expected == refused_host(url, policy, allow_loopback=loopback)


def test_media_of_takes_a_video_or_a_succeeded_task() -> None:
    """A Video is itself; a succeeded Task gives its first video; others are refused."""
    video = Video(id="v1", url=URL)
    task = Task(task_id="t1", status=TaskStatus.SUCCEED, result=TaskResult(videos=(video,)))
    assert (video, video) == (media_of(video), media_of(task))
    with pytest.raises(ValueError, match="not succeed"):
        media_of(Task(task_id="t2", status=TaskStatus.PROCESSING))
    with pytest.raises(TypeError):
        media_of("v1")
