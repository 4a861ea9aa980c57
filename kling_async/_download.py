"""Streaming, atomic, resumable downloads of result videos, with no credentials to the media host.

`download()` streams a `Video`'s URL into a temporary file next to the destination
(``.<name>.<random>.part``), checks the length the server announced, fsyncs it and renames it
into place with `os.replace`: a partial file never has the final name, whatever happens to the
process, and a failed or cancelled download removes its temporary file. A body that breaks off
is resumed with ``Range`` (and ``If-Range`` when the server sent a validator); a 200 to a Range
request starts over. Attempts that make no progress are bounded by the session's
`RetryPolicy`. Each connection holds one of the session's in-flight slots, so downloads and API
calls together never have more than ``max_in_flight`` requests on the wire.

Credentials (issue 10, "Never sends the Kling Authorization header, or any credential, to the
media host"): the Kling ``Authorization`` header is only ever added per request by
``_transport``, for the API. Downloads go through a `aiohttp.ClientSession` of their own over
the session's connection pool, so that whatever a borrowed aiohttp session carries (default
headers, ``auth``, cookies, middlewares) is not applied either; a URL with a user name or
password is refused. Redirects are followed here, at most five, never from https to http, and
with the same credential-free headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import inspect
import logging
import math
import os
import pathlib
import posixpath
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, TYPE_CHECKING

import aiohttp
import anyio
import anyio.to_thread
import yarl

from ._policies import parse_retry_after
from ._transport import USER_AGENT
from ._wire import CLOSED_WHILE_PENDING
from .errors import DownloadError, InvalidArgumentError, MediaExpiredError, SessionClosedError
from .models import Task, TaskStatus, Video, check_text

if TYPE_CHECKING:
    from ._wire import Wire

__all__ = ["Progress", "download", "file_name", "redact", "redirect_target"]

logger = logging.getLogger("kling_async")

Progress = Callable[[int, "int | None"], object]
"""``progress(bytes_done, total_bytes_or_None)``, called from the event loop."""

_CHUNK = 64 * 1024
_FLUSH = 1024 * 1024  # bytes held in memory before one write in a worker thread
_MAX_REDIRECTS = 5
_PROGRESS_INTERVAL = 0.1  # seconds between progress calls, unless a whole percent passed
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_EXPIRED = frozenset({403, 404, 410})  # what object stores answer for expired or deleted media
_RETRIED = frozenset({408, 425, 429})  # and every 5xx
_DEFAULT_SUFFIX = ".mp4"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)\s*", re.IGNORECASE)
# What a broken connection, a timeout or a malformed reply raises while reading; aiohttp
# raises RuntimeError ("Connection closed.", "Session is closed") when its session closes.
_NETWORK = (aiohttp.ClientError, OSError, asyncio.TimeoutError, RuntimeError)


# -- pure helpers ---------------------------------------------------------------------------


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


def redact(url: str) -> str:
    """``url`` without user info, query string or fragment: signed CDN URLs keep secrets there."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url: object) -> None:
    """Refuse, before any I/O, a media URL that is not plain http(s) or carries a credential."""
    if not isinstance(url, str):
        raise TypeError(f"the video's url must be a str, not {type(url).__name__}")
    if not url:
        raise InvalidArgumentError("url", "the video has no URL: there is nothing to download")
    check_text("url", url)
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise InvalidArgumentError("url", "must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  # raises for ":abc" and ports past 65535
    except ValueError as exc:
        raise InvalidArgumentError("url", f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError("url", f"must be an http(s) URL, got {redact(url)!r}")
    if "@" in parts.netloc:
        # aiohttp would send it as Basic auth: a credential to the media host.
        raise InvalidArgumentError("url", "must not carry a user name or password")


def file_name(video_id: str, url: str) -> str:
    """The file name in a destination directory: the video id (made safe) and the URL's suffix."""
    stem = _UNSAFE.sub("_", video_id)[:200].lstrip(".") or "video"
    suffix = posixpath.splitext(urllib.parse.urlsplit(url).path)[1]
    return stem + (suffix.lower() if _SUFFIX.fullmatch(suffix) else _DEFAULT_SUFFIX)


class RedirectRefused(Exception):
    """A redirect this module does not follow; the message says why."""


def redirect_target(current: str, location: str) -> str:
    """Where a redirect from ``current`` leads: http(s) only, never https to http, no user info."""
    target, _fragment = urllib.parse.urldefrag(urllib.parse.urljoin(current, location.strip()))
    try:
        parts = urllib.parse.urlsplit(target)
        parts.port  # noqa: B018  # raises for a bad port
    except ValueError:
        raise RedirectRefused("a redirect to an invalid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise RedirectRefused(f"a redirect to a non-http(s) URL ({scheme or 'no scheme'})")
    if urllib.parse.urlsplit(current).scheme.lower() == "https" and scheme == "http":
        raise RedirectRefused(f"a redirect from https to plain http ({redact(target)})")
    if "@" in parts.netloc:
        raise RedirectRefused("a redirect to a URL with a user name or password")
    return target


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes first-last/total`` (total may be ``*``), or None."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def _unsatisfied_size(value: str | None) -> int | None:
    """The size in a 416's ``Content-Range: bytes */size``, or None."""
    match = _UNSATISFIED.fullmatch(value or "")
    return int(match.group(1)) if match else None


def _validator(headers: Mapping[str, str]) -> str | None:
    """What ``If-Range`` may carry (RFC 9110 13.1.5): a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag is not None and etag.startswith('"'):
        return etag
    return headers.get("Last-Modified") or None


def _safe_cause(exc: BaseException) -> bool:
    """Whether ``exc`` may be kept as a cause: aiohttp's ``request_info`` holds the whole URL,
    signed query string and all."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if hasattr(current, "request_info"):
            return False
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{exc.status}, {exc.message}" if exc.message else str(exc.status)
    if isinstance(exc, aiohttp.InvalidURL):
        return "aiohttp refused the URL"  # its text is the whole URL
    return str(exc) or type(exc).__name__


# -- the temporary file (blocking; every method runs in a worker thread) ---------------------


class _PartFile:
    """The ``.<name>.<random>.part`` file a download writes, renamed into place when whole."""

    def __init__(self, final: pathlib.Path, temp: pathlib.Path, file: IO[bytes]) -> None:
        self.final = final
        self.temp = temp
        self.file: IO[bytes] | None = file
        self.size = 0

    @classmethod
    def create(cls, dest: pathlib.Path, name: str, *, as_directory: bool) -> _PartFile:
        final = dest / name if dest.is_dir() else dest
        if as_directory and final is dest:
            raise FileNotFoundError(errno.ENOENT, "no such directory to download into", str(dest))
        if final.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a directory has the file's name", str(final))
        directory = final.parent
        if not directory.is_dir():
            raise FileNotFoundError(
                errno.ENOENT, "no such directory to download into", str(directory)
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        prefix = f".{final.name[:200]}."
        for _ in range(100):
            temp = directory / f"{prefix}{secrets.token_hex(6)}.part"
            try:
                fd = os.open(temp, flags, 0o666)  # the umask applies, as for any new file
            except FileExistsError:
                continue
            return cls(final, temp, os.fdopen(fd, "wb"))
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))

    def write(self, chunks: list[bytes]) -> None:
        assert self.file is not None
        for chunk in chunks:
            self.file.write(chunk)
            self.size += len(chunk)

    def reset(self) -> None:
        """Start over: the server sent the whole body again."""
        assert self.file is not None
        self.file.seek(0)
        self.file.truncate()
        self.size = 0

    def commit(self) -> None:
        """Make the bytes durable, then give them the final name in one atomic step."""
        assert self.file is not None
        file, self.file = self.file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        os.replace(self.temp, self.final)
        _fsync_directory(self.final.parent)

    def discard(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            with contextlib.suppress(OSError):  # a failed flush must not keep the file
                file.close()
        self.temp.unlink(missing_ok=True)


def _fsync_directory(directory: pathlib.Path) -> None:
    """Persist the rename itself (POSIX); a platform that cannot open directories skips it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- progress -------------------------------------------------------------------------------


class _Progress:
    """Calls ``progress(done, total)`` at most every 100 ms or each whole percent, never going
    backwards (a restart from 0 is reported once it has passed what was reported)."""

    __slots__ = ("at", "callback", "clock", "done", "total")

    def __init__(self, callback: Progress | None, clock: Callable[[], float]) -> None:
        self.callback = callback
        self.clock = clock
        self.done = -1
        self.total: int | None = None
        self.at = -math.inf

    def update(self, done: int, total: int | None, *, final: bool = False) -> None:
        callback = self.callback
        if callback is None or done < self.done:
            return
        if done == self.done and total == self.total:
            return
        now = self.clock()
        if not final and now - self.at < _PROGRESS_INTERVAL:
            step = -(-total // 100) if total else None  # one percent, rounded up
            if step is None or done - self.done < step:
                return
        self.done, self.total, self.at = done, total, now
        result = callback(done, total)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("progress must be a plain function; it returned an awaitable")


# -- the download ---------------------------------------------------------------------------


class _Failure:
    """An attempt that may be tried again: the error to raise when the budget is spent."""

    __slots__ = ("error", "retry_after")

    def __init__(self, error: DownloadError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


async def download(
    wire: Wire,
    http: aiohttp.ClientSession | None,
    item: object,
    dest: object,
    *,
    progress: Progress | None,
    connect_timeout: float,
    read_timeout: float,
) -> pathlib.Path:
    """`KlingSession.download`: validate, then stream, resume, check, fsync and rename."""
    video = media_of(item)
    if not isinstance(video.id, str):
        raise TypeError(f"the video's id must be a str, not {type(video.id).__name__}")
    check_url(video.url)
    if not isinstance(dest, (str, os.PathLike)):
        raise TypeError(f"dest must be a path (str or os.PathLike), not {type(dest).__name__}")
    if isinstance(dest, str) and not dest:
        raise InvalidArgumentError("dest", "must not be empty")
    dest_path = pathlib.Path(dest)
    if progress is not None and (not callable(progress) or inspect.iscoroutinefunction(progress)):
        raise TypeError("progress must be a plain (not async) function of (bytes_done, total)")
    wire.check_open()
    if http is None or http.closed:
        raise SessionClosedError("the aiohttp.ClientSession lent to this session is closed")
    as_directory = str(dest).endswith(("/", os.sep))
    with anyio.CancelScope(shield=True):  # a cancel now would lose track of the new file
        part = await anyio.to_thread.run_sync(
            lambda: _PartFile.create(
                dest_path, file_name(video.id, video.url), as_directory=as_directory
            )
        )
    try:
        job = _Job(wire, http, video, part, _Progress(progress, wire.clock))
        job.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        await _unless_closed(wire, job.run)
        job.progress.update(part.size, part.size, final=True)  # before the file has its name
        await anyio.to_thread.run_sync(part.commit)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(part.discard)
        raise
    return part.final


async def _unless_closed(wire: Wire, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run()``, cut short (SessionClosedError) the moment the session closes, as
    requests on the wire are (api.md "Opening")."""
    failure: Exception | None = None
    finished = False
    async with anyio.create_task_group() as group:

        async def cancel_on_close() -> None:
            await wire.closing.wait()
            group.cancel_scope.cancel()

        group.start_soon(cancel_on_close)
        try:
            await run()
            finished = True
        except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
            failure = exc
        finally:
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if not finished:
        raise SessionClosedError(CLOSED_WHILE_PENDING)


class _Job:
    """One download's attempts, over one temporary file."""

    def __init__(
        self,
        wire: Wire,
        http: aiohttp.ClientSession,
        video: Video,
        part: _PartFile,
        progress: _Progress,
    ) -> None:
        self.wire = wire
        self.http = http
        self.video = video
        self.url = video.url
        self.shown_url = redact(video.url)
        self.part = part
        self.progress = progress
        self.timeout = aiohttp.ClientTimeout()
        self.ranges = True  # until the server says it cannot resume
        self.validator: str | None = None
        self.total: int | None = None
        self.status: int | None = None

    def error(
        self,
        message: str,
        cause: BaseException | None = None,
        *,
        cls: type[DownloadError] = DownloadError,
    ) -> DownloadError:
        detail = f"{message}: {_describe(cause)}" if cause is not None else message
        error = cls(
            detail,
            url=self.shown_url,
            video_id=self.video.id,
            status=self.status,
            received=self.part.size,
        )
        if cause is not None and _safe_cause(cause):
            error.__cause__ = cause
        return error

    async def run(self) -> None:
        wire, policy = self.wire, self.wire.retry_policy
        retry = 0
        best = 0
        progressed_at = wire.clock()
        async with aiohttp.ClientSession(
            connector=self.http.connector,
            connector_owner=False,  # the session's pool: it is closed with its owner
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # the bytes Content-Length counts are the bytes stored
            trace_configs=list(self.http.trace_configs) or None,
        ) as media:
            while True:
                failure = await self.attempt(media)
                if failure is None:
                    return
                if wire.closed:
                    raise SessionClosedError(CLOSED_WHILE_PENDING)
                if self.http.closed:
                    raise SessionClosedError(
                        "the aiohttp.ClientSession lent to this session was closed"
                    )
                if self.part.size > best:  # progress renews the budget
                    best, retry, progressed_at = self.part.size, 0, wire.clock()
                retry += 1
                if retry >= policy.attempts:
                    raise failure.error
                delay = policy.backoff(retry, wire.rng)
                if failure.retry_after is not None:
                    if failure.retry_after > policy.retry_after_cap:
                        raise self.error(
                            f"{failure.error.message}; the media host asked to retry after "
                            f"{failure.retry_after:g} s, over the cap of "
                            f"{policy.retry_after_cap:g} s (RetryPolicy.retry_after_cap)"
                        )
                    if policy.wait:
                        delay = max(delay, failure.retry_after)
                if wire.clock() - progressed_at + delay > policy.total_time:
                    raise failure.error
                wire.retries += 1
                logger.info(
                    "retrying download of %s in %.2f s (retry %d, %d bytes kept): %s",
                    self.shown_url,
                    delay,
                    retry,
                    self.part.size,
                    failure.error,
                )
                await wire.sleep(delay)

    async def attempt(self, media: aiohttp.ClientSession) -> _Failure | None:
        """One request (and its redirects) under one in-flight slot; None once the file is whole."""
        if self.part.size and not self.ranges:
            await anyio.to_thread.run_sync(self.part.reset)
        headers = {"Accept-Encoding": "identity"}
        ranged = self.part.size > 0
        if ranged:
            headers["Range"] = f"bytes={self.part.size}-"
            if self.validator is not None:
                headers["If-Range"] = self.validator
        wire = self.wire
        # The session's in-flight limiter (``Wire._limiter``): downloads share max_in_flight
        # with the API calls. Read here rather than through a new Wire method, to keep
        # _wire.py as it is; a public accessor there would be the cleaner spelling.
        limiter = wire._limiter
        assert limiter is not None
        await limiter.acquire()
        try:
            if wire.closed:
                raise SessionClosedError(CLOSED_WHILE_PENDING)
            wire.in_flight += 1
            try:
                return await self.exchange(media, headers, ranged)
            finally:
                wire.in_flight -= 1
        finally:
            limiter.release()

    async def exchange(
        self, media: aiohttp.ClientSession, headers: dict[str, str], ranged: bool
    ) -> _Failure | None:
        url = self.url
        for _hop in range(_MAX_REDIRECTS + 1):
            self.wire.requests_sent += 1
            self.status = None  # until this request has a reply
            broken: BaseException | None = None
            try:
                response = await media.get(
                    yarl.URL(url, encoded=url.isascii()),
                    headers=headers,
                    allow_redirects=False,  # followed below, with the same headers
                    timeout=self.timeout,
                    raise_for_status=False,
                )
            except _NETWORK as exc:
                broken = exc
            if broken is not None:
                return _Failure(self.error("could not get a reply from the media host", broken))
            try:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    self.status = response.status
                    refused: str | None = None
                    try:
                        url = redirect_target(url, location)
                    except RedirectRefused as exc:
                        refused = str(exc)
                    if refused is not None:
                        raise self.error(f"the media host sent {refused}, not followed")
                    response.release()  # pooled again if its body was read, else closed
                    continue
                outcome = await self.receive(response, ranged)
            except BaseException:
                response.close()  # whatever is left of the body is never read
                raise
            response.release()  # a whole body leaves a connection the pool can reuse
            return outcome
        raise self.error(f"the media host redirected more than {_MAX_REDIRECTS} times")

    async def receive(self, response: aiohttp.ClientResponse, ranged: bool) -> _Failure | None:
        """Check the reply's status and headers, then stream its body into the file."""
        status = self.status = response.status
        headers = response.headers
        part = self.part
        if status in _EXPIRED:
            raise self.error(
                "the media URL has expired or the result is gone (Kling keeps results for "
                "30 days; a fresh query of the task may give a new URL)",
                cls=MediaExpiredError,
            )
        if status == 416 and ranged:
            size = _unsatisfied_size(headers.get("Content-Range"))
            if size is not None and size == part.size:
                self.total = size  # the file already holds everything
                return None
            await anyio.to_thread.run_sync(part.reset)
            return _Failure(self.error("the media host refused to resume (HTTP 416)"))
        if status in _RETRIED or 500 <= status <= 599:
            retry_after = parse_retry_after(
                headers.get("Retry-After"), dt.datetime.now(dt.timezone.utc)
            )
            return _Failure(self.error(f"the media host answered HTTP {status}"), retry_after)
        if status not in (200, 206) or (status == 206 and not ranged):
            raise self.error(f"the media host answered HTTP {status}")
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise self.error(f"the media host sent a {encoding}-encoded body, not the video")
        if status == 200:
            validator = _validator(headers)
            accept = headers.get("Accept-Ranges", "").strip().lower()
            if ranged and (validator is None or validator == self.validator):
                self.ranges = accept == "bytes"  # it ignored the Range: resume only if it says so
            else:
                self.ranges = accept != "none"
            self.validator = validator
            if part.size:
                await anyio.to_thread.run_sync(part.reset)  # a 200 to a Range: start over
            length = response.content_length
            end = self.total = length
        else:
            span = _content_range(headers.get("Content-Range"))
            if span is None or span[0] != part.size:
                self.ranges = False  # another range than asked: start over next time
                return _Failure(self.error("the media host answered another range than asked"))
            end = span[1] + 1
            self.total = span[2]
        return await self.stream(response, end)

    async def stream(self, response: aiohttp.ClientResponse, end: int | None) -> _Failure | None:
        """Read the body into the file in bounded memory; the file then ends at ``end``."""
        part, progress = self.part, self.progress
        progress.update(part.size, self.total)
        buffer: list[bytes] = []
        buffered = 0
        broken: BaseException | None = None
        while True:
            try:
                chunk = await response.content.read(_CHUNK)
            except _NETWORK as exc:
                broken = exc
                break
            if not chunk:
                break
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= _FLUSH:
                await anyio.to_thread.run_sync(part.write, buffer)
                buffer, buffered = [], 0
            progress.update(part.size + buffered, self.total)
        if buffer:
            await anyio.to_thread.run_sync(part.write, buffer)
        if broken is not None:
            return _Failure(self.error("the download broke off", broken))
        if end is not None and part.size != end:
            return _Failure(self.error(f"the body ended after {part.size} of {end} bytes"))
        if self.total is not None and part.size != self.total:
            return _Failure(self.error(f"the file holds {part.size} of {self.total} bytes"))
        return None
