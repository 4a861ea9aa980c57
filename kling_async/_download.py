"""Streaming, atomic, resumable, bounded downloads of result videos, with no credentials to
the media host and no way onto internal addresses.

`download()` streams a `Video`'s URL into a temporary file next to the destination
(``.<name>.<random>.part``, locked while in use), checks the length the server announced,
fsyncs it and renames it into place with `os.replace`: a partial file never has the final name,
whatever happens to the process, and a failed or cancelled download removes its temporary file
(a killed process's leftover is removed by the next download to the same destination). A body
that breaks off is resumed with ``Range`` (and ``If-Range`` when the server sent a validator);
a 200 to a Range request starts over. Attempts that make no progress are bounded by the
session's `RetryPolicy`; a body is bounded in size (`DownloadPolicy.max_bytes`) and in
slowness (`DownloadPolicy.stall_bytes` per `DownloadPolicy.stall_window`). Each connection
holds one of the session's in-flight slots, so downloads and API calls together never have
more than ``max_in_flight`` requests on the wire.

Credentials: the Kling ``Authorization`` header is only ever added per request by
``_transport``, for the API. Downloads go through an `aiohttp.ClientSession` and a connector of
their own, so that whatever a borrowed aiohttp session carries (default headers, ``auth``,
cookies, middlewares) is not applied either; a URL with a user name or password is refused
(`_urls.http_url`). Redirects are followed here, one hop at a time, at most five, never from
https to http, and with the same credential-free headers.

Addresses: every URL and redirect is checked before it is requested, and the connector's
resolver checks every address a name resolves to before aiohttp may connect to it, so a DNS
answer that changes between a check and the connect (rebinding) meets the check itself. IP
literals never reach a resolver; they are checked from the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import inspect
import ipaddress
import logging
import math
import os
import pathlib
import posixpath
import re
import secrets
import socket
import stat
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.abc
import anyio
import anyio.to_thread
import yarl

from . import _urls
from ._account import CLOSED_WHILE_PENDING
from ._policies import DownloadPolicy, parse_retry_after
from ._transport import USER_AGENT, _holds_no_request
from ._urls import redact
from .errors import (
    DownloadError,
    InvalidArgumentError,
    MediaExpiredError,
    RetryAfterTooLongError,
    SessionClosedError,
)
from .models import Task, TaskStatus, Video

if TYPE_CHECKING:
    from ._wire import Wire

if sys.platform != "win32":
    import fcntl

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
_PART = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.part")
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


def is_directory(dest: str | os.PathLike[str]) -> bool:
    """Whether ``dest`` names a folder to download into: it ends with a path separator, has no
    suffix (``videos``, not ``video.mp4``), or is an existing directory."""
    text = os.fspath(dest)
    if text.endswith(("/", os.sep)):
        return True
    path = pathlib.Path(text)
    return not path.suffix or path.is_dir()


class RedirectRefused(Exception):
    """A redirect this module does not follow; the message says why."""


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
    literal, ``localhost``), or None; names are judged again by the resolver."""
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{exc.status}, {exc.message}" if exc.message else str(exc.status)
    if isinstance(exc, aiohttp.InvalidURL):
        return "aiohttp refused the URL"  # its text is the whole URL
    return str(exc) or type(exc).__name__


# -- the temporary file (blocking; every method runs in a worker thread) ---------------------


class _PartFile:
    """The ``.<name>.<random>.part`` file a download writes, renamed into place when whole.

    It is locked (``flock``, POSIX) while in use, so that the next download to the same
    destination can tell a leftover of a killed process (unlocked: removed) from a download
    in progress (locked: left alone).
    """

    def __init__(self, final: pathlib.Path, temp: pathlib.Path, fd: int) -> None:
        self.final = final
        self.temp = temp
        self.fd: int | None = fd
        self.size = 0

    @classmethod
    def create(cls, dest: pathlib.Path, name: str, *, as_directory: bool) -> _PartFile:
        if as_directory:
            if dest.exists() and not dest.is_dir():
                raise FileExistsError(
                    errno.EEXIST,
                    "a file has the name of the directory to download into (a destination "
                    "without a suffix names a directory)",
                    str(dest),
                )
            dest.mkdir(parents=True, exist_ok=True)
            final = dest / name
        else:
            final = dest
        if final.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a directory has the file's name", str(final))
        directory = final.parent
        if not directory.is_dir():
            raise FileNotFoundError(
                errno.ENOENT, "no such directory to download into", str(directory)
            )
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        prefix = f".{final.name[:200]}."
        for _ in range(100):
            temp = directory / f"{prefix}{secrets.token_hex(6)}.part"
            try:
                fd = os.open(temp, flags, 0o666)  # the umask applies, as for any new file
            except FileExistsError:
                continue
            if not _lock(fd, temp):  # removed as a leftover before it was locked: next name
                os.close(fd)
                continue
            part = cls(final, temp, fd)
            part.remove_leftovers(prefix)
            return part
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))

    def remove_leftovers(self, prefix: str) -> None:
        """Delete the unlocked ``.part`` files of this destination: a killed process left them."""
        if sys.platform == "win32":  # pragma: no cover - no flock
            return
        try:
            names = os.listdir(self.temp.parent)
        except OSError:
            return
        for name in names:
            if not name.startswith(prefix) or name == self.temp.name or not _PART.fullmatch(name):
                continue
            if len(name) != len(self.temp.name):
                continue  # another destination whose name begins with this one's
            path = self.temp.parent / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a download in progress holds it
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
                    logger.info("removed %s, left by an interrupted download", path)
            finally:
                os.close(fd)

    def write(self, chunks: list[bytes]) -> None:
        assert self.fd is not None
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view) :]
            self.size += len(chunk)

    def reset(self) -> None:
        """Start over: the server sent the whole body again."""
        assert self.fd is not None
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        self.size = 0

    def commit(self) -> None:
        """Make the bytes durable, then give them the final name in one atomic step; a file
        replaced keeps its permission bits."""
        assert self.fd is not None
        fd, self.fd = self.fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(os.stat(self.final).st_mode)
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # pragma: no cover - Windows
                    os.chmod(self.temp, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.temp, self.final)
        _fsync_directory(self.final.parent)

    def discard(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        self.temp.unlink(missing_ok=True)


def _lock(fd: int, path: pathlib.Path) -> bool:
    """Lock a new temporary file; False when another download removed it before the lock.
    A file system without locks downloads unlocked (its leftovers are then never removed)."""
    if sys.platform == "win32":  # pragma: no cover - no flock
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # another download is removing it as a leftover
    except OSError:  # pragma: no cover - no locks here (some network file systems)
        return True
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


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
    policy: object,
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
    if policy is None:
        policy = DownloadPolicy()
    if not isinstance(policy, DownloadPolicy):
        raise TypeError(f"policy must be a DownloadPolicy, not {type(policy).__name__}")
    wire.check_open()
    if http is None or http.closed:
        raise SessionClosedError("the aiohttp.ClientSession lent to this session is closed")
    allow_loopback = _urls.is_loopback(urllib.parse.urlsplit(wire.base_url).hostname or "")
    refused = refused_host(video.url, policy, allow_loopback=allow_loopback)
    if refused is not None:
        raise DownloadError(
            f"refusing to download from an internal address ({refused}); "
            "DownloadPolicy(allow_private=True) allows it",
            url=redact(video.url),
            video_id=video.id,
        )
    as_directory = await anyio.to_thread.run_sync(is_directory, dest)
    with anyio.CancelScope(shield=True):  # a cancel now would lose track of the new file
        part = await anyio.to_thread.run_sync(
            lambda: _PartFile.create(
                dest_path, file_name(video.id, video.url), as_directory=as_directory
            )
        )
    try:
        job = _Job(wire, http, video, part, _Progress(progress, wire.clock))
        job.policy = policy
        job.allow_loopback = allow_loopback
        job.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        await _unless_closed(wire, job.run)
        job.progress.update(part.size, part.size, final=True)  # before the file has its name
        await job.on_disk(part.commit)
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


class _AddressRefused(Exception):
    """The resolver found an address a download must not connect to (not an OSError, so that
    aiohttp passes it through instead of treating it as a failed look-up to retry)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {reason}")


class _CheckingResolver(aiohttp.abc.AbstractResolver):
    """The system resolver, refusing any answer with an address a download must not reach.

    aiohttp connects only to addresses its resolver returned, so checking here checks the
    address actually connected to, whatever the name resolved to when it was first seen.
    """

    def __init__(self, *, allow_loopback: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow_loopback = allow_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            reason = _urls.refused_address(address, allow_loopback=self._allow_loopback)
            if reason is not None:
                raise _AddressRefused(host, f"{address}, {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


# The media connectors in use, one per session and address rule, shared by that session's
# concurrent downloads (so they reuse connections) and closed when the last of them ends.
_connectors: dict[tuple[int, bool, bool], tuple[aiohttp.TCPConnector, list[int]]] = {}


@contextlib.asynccontextmanager
async def _media_connector(
    wire: Wire, policy: DownloadPolicy, allow_loopback: bool
) -> AsyncIterator[aiohttp.TCPConnector]:
    key = (id(wire), policy.allow_private, allow_loopback)  # the wire lives while in use
    entry = _connectors.get(key)
    if entry is None:
        resolver = (
            None if policy.allow_private else _CheckingResolver(allow_loopback=allow_loopback)
        )
        entry = _connectors[key] = (aiohttp.TCPConnector(limit=0, resolver=resolver), [0])
    connector, users = entry
    users[0] += 1
    try:
        yield connector
    finally:
        users[0] -= 1
        if users[0] == 0:
            del _connectors[key]
            with anyio.CancelScope(shield=True):
                await connector.close()


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
        self.policy = DownloadPolicy()
        self.allow_loopback = False
        self.timeout = aiohttp.ClientTimeout()
        self.ranges = True  # until the server says it cannot resume
        self.validator: str | None = None
        self.total: int | None = None
        self.status: int | None = None
        self.pending = 0  # bytes read but not yet written to the file

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
            received=self.part.size + self.pending,
        )
        if cause is not None and _holds_no_request(cause):
            error.__cause__ = cause
        return error

    async def on_disk(self, operation: Callable[..., None], *args: Any) -> None:
        """Run a file operation in a worker thread; a disk full (or any write error) after
        the download began is a DownloadError, chained to the OSError."""
        failure: OSError | None = None
        try:
            await anyio.to_thread.run_sync(operation, *args)
        except OSError as exc:
            failure = exc
        if failure is not None:
            raise self.error(f"could not write the video to {self.part.temp}", failure)

    async def run(self) -> None:
        wire, policy = self.wire, self.wire.retry_policy
        retry = 0
        best = 0
        progressed_at = wire.clock()
        async with (
            _media_connector(wire, self.policy, self.allow_loopback) as connector,
            aiohttp.ClientSession(
                connector=connector,
                connector_owner=False,  # shared by this session's concurrent downloads
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # the bytes Content-Length counts are the bytes stored
                trace_configs=list(self.http.trace_configs) or None,
            ) as media,
        ):
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
                too_long: RetryAfterTooLongError | None = None
                try:
                    delay = policy.retry_delay(
                        failure.error,
                        retry=retry,
                        elapsed=wire.clock() - progressed_at,
                        rng=wire.rng,
                        retry_after=failure.retry_after,
                    )
                except RetryAfterTooLongError as exc:
                    too_long = exc
                if too_long is not None:
                    raise self.error(
                        f"{failure.error.message}; the media host asked to retry after "
                        f"{too_long.retry_after:g} s, over the cap of {too_long.cap:g} s "
                        "(RetryPolicy.retry_after_cap)"
                    ) from too_long
                if delay is None:
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
            await self.on_disk(self.part.reset)
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

    def refuse(self, url: str, reason: str) -> DownloadError:
        shown = redact(url)
        via = "" if shown == self.shown_url else f" (redirected to {shown})"
        return self.error(
            f"refusing to download from an internal address{via}: {reason}; "
            "DownloadPolicy(allow_private=True) allows it"
        )

    async def exchange(
        self, media: aiohttp.ClientSession, headers: dict[str, str], ranged: bool
    ) -> _Failure | None:
        url = self.url
        for _hop in range(_MAX_REDIRECTS + 1):
            reason = refused_host(url, self.policy, allow_loopback=self.allow_loopback)
            if reason is not None:
                raise self.refuse(url, reason)
            self.wire.requests_sent += 1
            self.status = None  # until this request has a reply
            broken: BaseException | None = None
            refused: _AddressRefused | None = None
            try:
                response = await media.get(
                    yarl.URL(url, encoded=url.isascii()),
                    headers=headers,
                    allow_redirects=False,  # followed below, hop by hop, with the same headers
                    timeout=self.timeout,
                    raise_for_status=False,
                )
            except _AddressRefused as exc:
                refused = exc
            except _NETWORK as exc:
                broken = exc
            if refused is not None:
                self.wire.requests_sent -= 1  # refused before connecting: nothing was sent
                raise self.refuse(url, str(refused))
            if broken is not None:
                return _Failure(self.error("could not get a reply from the media host", broken))
            try:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    self.status = response.status
                    refusal: str | None = None
                    try:
                        url = redirect_target(url, location)
                    except RedirectRefused as exc:
                        refusal = str(exc)
                    if refusal is not None:
                        raise self.error(f"the media host sent {refusal}, not followed")
                    response.release()  # pooled again if its body was read, else closed
                    continue
                outcome = await self.receive(response, ranged)
            except BaseException:
                response.close()  # whatever is left of the body is never read
                raise
            response.release()  # a whole body leaves a connection the pool can reuse
            return outcome
        raise self.error(f"the media host redirected more than {_MAX_REDIRECTS} times")

    def too_big(self, size: int, what: str) -> DownloadError:
        return self.error(
            f"the media host {what} {size} bytes, over the cap of {self.policy.max_bytes} "
            "bytes (DownloadPolicy.max_bytes)"
        )

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
            await self.on_disk(part.reset)
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
            length = response.content_length
            if length is not None and length > self.policy.max_bytes:
                raise self.too_big(length, "announced")
            validator = _validator(headers)
            accept = headers.get("Accept-Ranges", "").strip().lower()
            if ranged and (validator is None or validator == self.validator):
                self.ranges = accept == "bytes"  # it ignored the Range: resume only if it says so
            else:
                self.ranges = accept != "none"
            self.validator = validator
            if part.size:
                await self.on_disk(part.reset)  # a 200 to a Range: start over
            end = self.total = length
        else:
            span = _content_range(headers.get("Content-Range"))
            if span is None or span[0] != part.size:
                self.ranges = False  # another range than asked: start over next time
                return _Failure(self.error("the media host answered another range than asked"))
            if max(span[1] + 1, span[2] or 0) > self.policy.max_bytes:
                raise self.too_big(max(span[1] + 1, span[2] or 0), "announced")
            end = span[1] + 1
            self.total = span[2]
        return await self.stream(response, end)

    def stalled(self) -> DownloadError:
        limits = self.policy
        return self.error(
            f"the media host sent fewer than {limits.stall_bytes} bytes in "
            f"{limits.stall_window:g} s (DownloadPolicy.stall_bytes, stall_window)"
        )

    async def stream(self, response: aiohttp.ClientResponse, end: int | None) -> _Failure | None:
        """Read the body into the file in bounded memory; the file then ends at ``end``.

        At least ``stall_bytes`` must arrive in every ``stall_window`` seconds (on the loop's
        clock), and the file must stay within ``max_bytes``; either failing is final.
        """
        part, progress, limits, clock = self.part, self.progress, self.policy, self.wire.clock
        progress.update(part.size, self.total)
        buffer: list[bytes] = []
        self.pending = 0
        broken: BaseException | None = None
        window_start, window_bytes = clock(), 0
        while True:
            chunk = b""
            deadline = window_start + limits.stall_window
            with anyio.move_on_after(deadline - clock()) as waited:
                try:
                    chunk = await response.content.read(_CHUNK)
                except _NETWORK as exc:
                    broken = exc
                    break
            if waited.cancelled_caught:
                raise self.stalled()
            if not chunk:
                break
            if part.size + self.pending + len(chunk) > limits.max_bytes:
                raise self.too_big(part.size + self.pending + len(chunk), "sent more than")
            buffer.append(chunk)
            self.pending += len(chunk)
            window_bytes += len(chunk)
            if window_bytes >= limits.stall_bytes:
                window_start, window_bytes = clock(), 0
            elif clock() >= deadline:
                raise self.stalled()
            if self.pending >= _FLUSH:
                chunks, buffer, self.pending = buffer, [], 0
                await self.on_disk(part.write, chunks)
            progress.update(part.size + self.pending, self.total)
        if buffer:
            chunks, buffer, self.pending = buffer, [], 0
            await self.on_disk(part.write, chunks)
        if broken is not None:
            return _Failure(self.error("the download broke off", broken))
        if end is not None and part.size != end:
            return _Failure(self.error(f"the body ended after {part.size} of {end} bytes"))
        if self.total is not None and part.size != self.total:
            return _Failure(self.error(f"the file holds {part.size} of {self.total} bytes"))
        return None
