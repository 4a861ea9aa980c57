"""What a media host's reply means for a download, decided from values alone.

`decide` turns a reply's status and headers (and what was asked: the bytes already held, the
validator sent, the size cap) into what to do: write the body (`Write`), follow a redirect
(`Follow`), stop because the file is already whole (`Whole`), try again (`Retry`), or give up
(`Fail`, `Expired`). The rest are the pure rules around it: which video a download takes,
which URLs and redirects are refused, ``Content-Range``, and the file's name. No I/O, no
clock: the time a ``Retry-After`` date is read against is passed in.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import urllib.parse
from collections.abc import Mapping

import attrs

from . import _urls
from ._policies import DownloadPolicy, parse_retry_after
from ._urls import redact
from .errors import InvalidArgumentError
from .models import Task, TaskStatus, Video

__all__ = [
    "EXPIRED_MESSAGE",
    "MAX_REDIRECTS",
    "Asked",
    "Decision",
    "Expired",
    "Fail",
    "Follow",
    "RedirectRefused",
    "Retry",
    "Whole",
    "Write",
    "body_shortfall",
    "check_url",
    "content_range",
    "decide",
    "file_name",
    "media_of",
    "redirect_target",
    "refused_host",
    "too_big",
    "unsatisfied_size",
    "validator",
]

MAX_REDIRECTS = 5
EXPIRED_MESSAGE = (
    "the media URL has expired or the result is gone (Kling keeps results for "
    "30 days; a fresh query of the task may give a new URL)"
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_EXPIRED = frozenset({403, 404, 410})  # what object stores answer for expired or deleted media
_RETRIED = frozenset({408, 425, 429})  # and every 5xx
_DEFAULT_SUFFIX = ".mp4"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)\s*", re.IGNORECASE)


# -- what a download takes, and where it may go ---------------------------------------------


def media_of(item: object) -> Video:
    """The video to download: a `Video`, or a succeeded `Task`'s first one."""
    if isinstance(item, Task):
        if item.status.value != TaskStatus.SUCCEED.value:
            raise ValueError(
                f"task {item.task_id} is {item.status.value}, not succeed: "
                "there is no result to download yet (wait for it first)"
            )
        video = item.video
        if video is None:
            raise ValueError(
                f"task {item.task_id} succeeded but its reply lists no video; "
                "query it again with get_task()"
            )
        return video
    if isinstance(item, Video):
        return item
    raise TypeError(f"download() takes a Video or a Task, not {type(item).__name__}")


def check_url(url: object) -> None:
    """Refuse, before any I/O, a media URL that is not plain http(s) or carries a credential."""
    if isinstance(url, str) and not url:
        raise InvalidArgumentError("url", "the video has no URL: there is nothing to download")
    _urls.http_url(url, "url")


def file_name(video_id: str, url: str) -> str:
    """The file name in a destination directory: the video id (made safe) and the URL's suffix."""
    stem = _UNSAFE.sub("_", video_id)[:200].lstrip(".") or "video"
    suffix = posixpath.splitext(urllib.parse.urlsplit(url).path)[1]
    return stem + (suffix.lower() if _SUFFIX.fullmatch(suffix) else _DEFAULT_SUFFIX)


class RedirectRefused(Exception):
    """A redirect that is not followed; the message says why."""


def redirect_target(current: str, location: str) -> str:
    """Where a redirect from ``current`` leads: http(s) only, never https to http, no user info."""
    target, _fragment = urllib.parse.urldefrag(urllib.parse.urljoin(current, location.strip()))
    try:
        parts = _urls.http_url(target, "the redirect")
    except InvalidArgumentError as exc:
        raise RedirectRefused(f"a redirect whose target {str(exc).split(': ', 1)[1]}") from None
    if urllib.parse.urlsplit(current).scheme.lower() == "https" and parts.scheme == "http":
        raise RedirectRefused(f"a redirect from https to plain http ({redact(target)})")
    return target


def refused_host(url: str, policy: DownloadPolicy, *, allow_loopback: bool) -> str | None:
    """Why ``url``'s host must not be requested, judged from its spelling alone (an IP
    literal, ``localhost``), or None; names are judged again by the transport's resolver."""
    if policy.allow_private:
        return None
    host = urllib.parse.urlsplit(url).hostname or ""
    address = _urls.literal_address(host)
    if address is not None:
        reason = _urls.refused_address(address, allow_loopback=allow_loopback)
        return None if reason is None else f"{address} is {reason}"
    if _urls.is_loopback(host) and not allow_loopback:
        return f"{host} is a loopback name"
    return None


# -- headers --------------------------------------------------------------------------------


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, ignoring case."""
    value = headers.get(name)
    if value is not None:
        return value
    folded = name.lower()
    return next((v for k, v in headers.items() if k.lower() == folded), None)


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes first-last/total`` (total may be ``*``), or None."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def unsatisfied_size(value: str | None) -> int | None:
    """The size in a 416's ``Content-Range: bytes */size``, or None."""
    match = _UNSATISFIED.fullmatch(value or "")
    return int(match.group(1)) if match else None


def validator(headers: Mapping[str, str]) -> str | None:
    """What ``If-Range`` may carry (RFC 9110 13.1.5): a strong ETag, else Last-Modified."""
    etag = header(headers, "ETag")
    if etag is not None and etag.startswith('"'):
        return etag
    return header(headers, "Last-Modified") or None


def content_length(headers: Mapping[str, str]) -> int | None:
    """The ``Content-Length`` header as a number, or None."""
    value = (header(headers, "Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


# -- the decision ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Asked:
    """What the request asked: the bytes the file holds (asked from ``have`` on when
    ``ranged``), the ``If-Range`` validator sent with it, and the size cap."""

    url: str
    have: int = 0
    ranged: bool = False
    validator: str | None = None
    max_bytes: int = DownloadPolicy().max_bytes


@attrs.frozen(kw_only=True)
class Follow:
    """A redirect to follow, with the same headers."""

    url: str


@attrs.frozen(kw_only=True)
class Whole:
    """A 416 that says the file already holds all ``total`` bytes."""

    total: int


@attrs.frozen(kw_only=True)
class Write:
    """Stream the body into the file: from 0 when ``restart``, so that it then ends at ``end``.

    ``ranges`` says whether a later attempt may resume with Range (None: as before), and
    ``validator`` is what its If-Range sends (when ``ranges`` is None, the one before).
    """

    restart: bool
    end: int | None
    total: int | None
    ranges: bool | None = None
    validator: str | None = None


@attrs.frozen(kw_only=True)
class Retry:
    """A failure worth another attempt within the retry policy (``reason`` if not)."""

    reason: str
    retry_after: float | None = None
    restart: bool = False  # the file's bytes are not worth resuming from
    ranges: bool | None = None  # False: the next attempt asks for the whole body


@attrs.frozen(kw_only=True)
class Fail:
    """A final failure."""

    reason: str


@attrs.frozen(kw_only=True)
class Expired:
    """The media URL expired or the result is gone."""

    reason: str = EXPIRED_MESSAGE


Decision = Follow | Whole | Write | Retry | Fail | Expired


def too_big(size: int, what: str, cap: int) -> str:
    """Why a body of ``size`` bytes is refused (``what``: "announced", "sent more than")."""
    return (
        f"the media host {what} {size} bytes, over the cap of {cap} bytes "
        "(DownloadPolicy.max_bytes)"
    )


def decide(status: int, headers: Mapping[str, str], asked: Asked, *, now: dt.datetime) -> Decision:
    """What to do with a reply of ``status`` and ``headers`` to the request ``asked``;
    ``now`` (UTC) is what a ``Retry-After`` date is read against."""
    location = header(headers, "Location")
    if status in _REDIRECTS and location:
        try:
            return Follow(url=redirect_target(asked.url, location))
        except RedirectRefused as exc:
            return Fail(reason=f"the media host sent {exc}, not followed")
    if status in _EXPIRED:
        return Expired()
    if status == 416 and asked.ranged:
        size = unsatisfied_size(header(headers, "Content-Range"))
        if size is not None and size == asked.have:
            return Whole(total=size)
        return Retry(reason="the media host refused to resume (HTTP 416)", restart=True)
    if status in _RETRIED or 500 <= status <= 599:
        retry_after = parse_retry_after(header(headers, "Retry-After"), now)
        return Retry(reason=f"the media host answered HTTP {status}", retry_after=retry_after)
    if status not in (200, 206) or (status == 206 and not asked.ranged):
        return Fail(reason=f"the media host answered HTTP {status}")
    encoding = (header(headers, "Content-Encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        return Fail(reason=f"the media host sent a {encoding}-encoded body, not the video")
    if status == 200:
        length = content_length(headers)
        if length is not None and length > asked.max_bytes:
            return Fail(reason=too_big(length, "announced", asked.max_bytes))
        new = validator(headers)
        accept = (header(headers, "Accept-Ranges") or "").strip().lower()
        if asked.ranged and (new is None or new == asked.validator):
            ranges = accept == "bytes"  # it ignored the Range: resume only if it says so
        else:
            ranges = accept != "none"
        return Write(restart=asked.have > 0, end=length, total=length, ranges=ranges, validator=new)
    span = content_range(header(headers, "Content-Range"))
    if span is None or span[0] != asked.have:
        return Retry(reason="the media host answered another range than asked", ranges=False)
    announced = max(span[1] + 1, span[2] or 0)
    if announced > asked.max_bytes:
        return Fail(reason=too_big(announced, "announced", asked.max_bytes))
    return Write(restart=False, end=span[1] + 1, total=span[2], validator=asked.validator)


def body_shortfall(size: int, end: int | None, total: int | None) -> str | None:
    """Why a body that ended with the file at ``size`` bytes is not whole, or None."""
    if end is not None and size != end:
        return f"the body ended after {size} of {end} bytes"
    if total is not None and size != total:
        return f"the file holds {size} of {total} bytes"
    return None
