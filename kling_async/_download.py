"""Streaming, atomic, resumable, bounded downloads of result videos, with no credentials to
the media host and no way onto internal addresses: the driver that sends, sleeps and records.

`download()` streams a `Video`'s URL through the session's `Transport` into a `PartFile` next
to the destination, checks the length the server announced, fsyncs it and renames it into
place: a partial file never has the final name, and a failed or cancelled download removes
its temporary file. What each reply means (write, resume, start over, follow a redirect,
retry, give up) is decided by ``_media.decide``; how long to wait before trying again by the
session's `RetryPolicy` (attempts that make no progress are bounded by it). A body is bounded
in size (`DownloadPolicy.max_bytes`) and in slowness (`DownloadPolicy.stall_bytes` per
`DownloadPolicy.stall_window`). Each connection holds one of the session's in-flight slots
(`Wire.slot`), so downloads and API calls together never have more than ``max_in_flight``
requests on the wire.

Credentials: the Kling ``Authorization`` header is only ever added by the transport's `send`,
for the API; media requests carry only the headers built here, and a URL with a user name or
password is refused (`_urls.http_url`). Redirects are followed here, one hop at a time, at
most five, never from https to http, and with the same credential-free headers.

Addresses: every URL and redirect is checked before it is requested, and the transport checks
every address a name resolves to before it connects (IP literals are checked from the URL).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import math
import os
import pathlib
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from . import _media, _urls
from ._account import CLOSED_WHILE_PENDING
from ._media import check_url, file_name, media_of, refused_host
from ._partfile import PartFile, is_directory
from ._policies import DownloadPolicy
from ._transport import AddressRefused, MediaClient, MediaReply, Transport, holds_no_request
from ._urls import redact
from .errors import (
    DownloadError,
    InvalidArgumentError,
    MediaExpiredError,
    RetryAfterTooLongError,
    SessionClosedError,
    TransportError,
)
from .models import Video

if TYPE_CHECKING:
    from ._wire import Wire

__all__ = ["Progress", "download", "file_name"]

logger = logging.getLogger("kling_async")

Progress = Callable[[int, "int | None"], object]
"""``progress(bytes_done, total_bytes_or_None)``, called from the event loop."""

_FLUSH = 1024 * 1024  # bytes held in memory before one write in a worker thread
_PROGRESS_INTERVAL = 0.1  # seconds between progress calls, unless a whole percent passed


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
    transport: Transport | None,
    item: object,
    dest: object,
    *,
    progress: Progress | None,
    policy: object,
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
    if transport is None or transport.closed:
        raise SessionClosedError(
            "the aiohttp.ClientSession (or transport) lent to this session is closed"
        )
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
            lambda: PartFile.create(
                dest_path, file_name(video.id, video.url), as_directory=as_directory
            )
        )
    try:
        job = _Job(wire, transport, video, part, _Progress(progress, wire.clock))
        job.policy = policy
        job.allow_loopback = allow_loopback
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
    requests on the wire are (docs/concepts.md, "The session and its lifetime")."""
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
        transport: Transport,
        video: Video,
        part: PartFile,
        progress: _Progress,
    ) -> None:
        self.wire = wire
        self.transport = transport
        self.video = video
        self.url = video.url
        self.shown_url = redact(video.url)
        self.part = part
        self.progress = progress
        self.policy = DownloadPolicy()
        self.allow_loopback = False
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
        detail = message if cause is None else f"{message}: {str(cause) or type(cause).__name__}"
        error = cls(
            detail,
            url=self.shown_url,
            video_id=self.video.id,
            status=self.status,
            received=self.part.size + self.pending,
        )
        if cause is not None and holds_no_request(cause):
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
        async with self.transport.media(
            allow_private=self.policy.allow_private, allow_loopback=self.allow_loopback
        ) as media:
            while True:
                failure = await self.attempt(media)
                if failure is None:
                    return
                if wire.closed:
                    raise SessionClosedError(CLOSED_WHILE_PENDING)
                if self.transport.closed:
                    raise SessionClosedError(
                        "the aiohttp.ClientSession (or transport) lent to this session was closed"
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

    async def attempt(self, media: MediaClient) -> _Failure | None:
        """One request (and its redirects) under one in-flight slot; None once the file is whole."""
        if self.part.size and not self.ranges:
            await self.on_disk(self.part.reset)
        headers = {"Accept-Encoding": "identity"}
        ranged = self.part.size > 0
        if ranged:
            headers["Range"] = f"bytes={self.part.size}-"
            if self.validator is not None:
                headers["If-Range"] = self.validator
        async with self.wire.slot():
            return await self.exchange(media, headers, ranged)

    def refuse(self, url: str, reason: str) -> DownloadError:
        shown = redact(url)
        via = "" if shown == self.shown_url else f" (redirected to {shown})"
        return self.error(
            f"refusing to download from an internal address{via}: {reason}; "
            "DownloadPolicy(allow_private=True) allows it"
        )

    async def exchange(
        self, media: MediaClient, headers: dict[str, str], ranged: bool
    ) -> _Failure | None:
        url = self.url
        for _hop in range(_media.MAX_REDIRECTS + 1):
            reason = refused_host(url, self.policy, allow_loopback=self.allow_loopback)
            if reason is not None:
                raise self.refuse(url, reason)
            self.wire.requests_sent += 1
            self.status = None  # until this request has a reply
            broken: TransportError | None = None
            refused: AddressRefused | None = None
            try:
                async with media.stream(url, headers) as reply:
                    asked = _media.Asked(
                        url=url,
                        have=self.part.size,
                        ranged=ranged,
                        validator=headers.get("If-Range"),
                        max_bytes=self.policy.max_bytes,
                    )
                    decision = _media.decide(
                        reply.status, reply.headers, asked, now=dt.datetime.now(dt.timezone.utc)
                    )
                    if isinstance(decision, _media.Follow):
                        self.status = reply.status
                        url = decision.url
                        continue
                    return await self.receive(reply, decision)
            except AddressRefused as exc:
                refused = exc
            except TransportError as exc:  # no reply (the body's failures end in stream())
                broken = exc
            if refused is not None:
                self.wire.requests_sent -= 1  # refused before connecting: nothing was sent
                raise self.refuse(url, str(refused))
            assert broken is not None
            return _Failure(self.error("could not get a reply from the media host", broken))
        raise self.error(f"the media host redirected more than {_media.MAX_REDIRECTS} times")

    async def receive(self, reply: MediaReply, decision: _media.Decision) -> _Failure | None:
        """Act on what the reply's status and headers mean, then stream its body into the file."""
        self.status = reply.status
        part = self.part
        if isinstance(decision, _media.Expired):
            raise self.error(decision.reason, cls=MediaExpiredError)
        if isinstance(decision, _media.Fail):
            raise self.error(decision.reason)
        if isinstance(decision, _media.Whole):
            self.total = decision.total  # the file already holds everything
            return None
        if isinstance(decision, _media.Retry):
            if decision.restart:
                await self.on_disk(part.reset)
            if decision.ranges is not None:
                self.ranges = decision.ranges
            return _Failure(self.error(decision.reason), decision.retry_after)
        assert isinstance(decision, _media.Write)
        if decision.ranges is not None:
            self.ranges = decision.ranges
            self.validator = decision.validator
        if decision.restart:
            await self.on_disk(part.reset)  # a 200 to a Range: start over
        self.total = decision.total
        return await self.stream(reply, decision.end)

    def too_big(self, size: int, what: str) -> DownloadError:
        return self.error(_media.too_big(size, what, self.policy.max_bytes))

    def stalled(self) -> DownloadError:
        limits = self.policy
        return self.error(
            f"the media host sent fewer than {limits.stall_bytes} bytes in "
            f"{limits.stall_window:g} s (DownloadPolicy.stall_bytes, stall_window)"
        )

    async def stream(self, reply: MediaReply, end: int | None) -> _Failure | None:
        """Read the body into the file in bounded memory; the file then ends at ``end``.

        At least ``stall_bytes`` must arrive in every ``stall_window`` seconds (on the loop's
        clock), and the file must stay within ``max_bytes``; either failing is final.
        """
        part, progress, limits, clock = self.part, self.progress, self.policy, self.wire.clock
        progress.update(part.size, self.total)
        buffer: list[bytes] = []
        self.pending = 0
        broken: TransportError | None = None
        window_start, window_bytes = clock(), 0
        body = reply.body
        while True:
            chunk = b""
            deadline = window_start + limits.stall_window
            with anyio.move_on_after(deadline - clock()) as waited:
                try:
                    chunk = await body.__anext__()
                except StopAsyncIteration:
                    pass
                except TransportError as exc:
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
        shortfall = _media.body_shortfall(part.size, end, self.total)
        return None if shortfall is None else _Failure(self.error(shortfall))
