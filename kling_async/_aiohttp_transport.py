"""The `Transport` over aiohttp: the only client-side module that speaks aiohttp.

It knows nothing of Kling: it sends an `HTTPRequest` and reads the body under a size cap, or
streams a media GET through a connector of its own, and turns every aiohttp or socket failure
into a `TransportError` whose ``sent`` says whether the request may have reached the server
(docs/concepts.md, "Creates: retries, stamping and reconciliation": a refused connection
certainly did not).

Media requests go through an `aiohttp.ClientSession` and a connector of their own, so that
whatever a borrowed aiohttp session carries (default headers, ``auth``, cookies,
middlewares) is not applied to them. Unless private addresses are allowed, that connector's
resolver checks every address a name resolves to before aiohttp may connect to it, so a DNS
answer that changes between the driver's check of the URL and the connect (rebinding) meets
the check itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

import aiohttp
import aiohttp.abc
import anyio
import yarl

from . import _urls
from ._transport import AddressRefused, MediaReply, holds_no_request
from .errors import ResponseDecodeError, TransportError
from .sansio import HTTPRequest, HTTPResponse

__all__ = ["USER_AGENT", "AiohttpTransport", "open_http_session"]

# The package version (kling_async.__version__; a test keeps the two equal).
USER_AGENT = f"kling_async/0.2.0 aiohttp/{aiohttp.__version__}"
_CHUNK = 64 * 1024


def open_http_session(
    *, limit: int, trace_configs: Sequence[aiohttp.TraceConfig]
) -> aiohttp.ClientSession:
    """The aiohttp session a KlingSession owns: as many connections as requests in flight."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        trace_configs=list(trace_configs) or None,
        headers={"User-Agent": USER_AGENT},
    )


class AiohttpTransport:
    """Sends requests over one ``aiohttp.ClientSession`` with per-request socket timeouts."""

    __slots__ = (
        "_connect_timeout",
        "_max_body",
        "_media",
        "_read_timeout",
        "_session",
        "_timeout",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_body: int,
    ) -> None:
        self._session = session
        # sock_connect/sock_read bound each socket step; waiting for a pooled connection is
        # bounded by the session's limiter instead, so a large batch never hits a pool timeout.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._max_body = max_body
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # The media connectors in use, one per address rule, shared by concurrent downloads
        # (so they reuse connections) and closed when the last of them ends.
        self._media: dict[tuple[bool, bool], tuple[aiohttp.TCPConnector, list[int]]] = {}

    @property
    def closed(self) -> bool:
        """True once the aiohttp session is closed (by us, or by its owner if borrowed)."""
        return self._session.closed

    async def send(self, request: HTTPRequest, authorization: str) -> HTTPResponse:
        """Send ``request`` with ``authorization`` and return the whole reply.

        Every failure becomes a `TransportError` raised outside the ``except`` block that
        caught it, so that neither ``__cause__`` nor ``__context__`` leads to aiohttp's
        request objects, whose headers hold the ``Authorization`` credential.
        """
        try:
            # encoded=True: the URL is sent exactly as sansio built it (no requoting, no
            # normalisation of "%2E%2E" into another path).
            url = yarl.URL(request.url, encoded=True)
        except ValueError as exc:
            raise _error(request, f"the URL {request.url} is not valid", sent=False) from exc
        headers = dict(request.headers)
        headers["Authorization"] = authorization
        try:
            async with self._session.request(
                request.method,
                url,
                data=request.body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,  # a borrowed session's own setting would hide the reply
            ) as response:
                body = await self._read(response)
                return HTTPResponse(status=response.status, body=body, headers=response.headers)
        except ResponseDecodeError:
            raise
        except BaseException as exc:
            failure = self._translate(request, exc)
            if failure is None:
                raise
            if holds_no_request(exc):
                failure.__cause__ = exc
        del headers, authorization
        raise failure

    def _translate(self, request: HTTPRequest, exc: BaseException) -> TransportError | None:
        """The TransportError for an aiohttp or socket failure, or None to let it through.

        Its message says what failed in words (``could not connect to URL: connection
        refused``), not in aiohttp's or OpenSSL's. ``sent`` is False only where the request
        certainly never left (docs/concepts.md, "Creates: retries, stamping and
        reconciliation"): no connection, a URL aiohttp refused, a loop that cannot run it.
        """
        url = request.url
        if isinstance(exc, aiohttp.ClientConnectorError):
            # DNS, refused connection, TLS handshake: the request never left.
            return _error(request, f"could not connect to {url}: {_reason(exc)}", sent=False)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            what = f"could not connect to {url}: no answer within {self._connect_timeout:g} s"
            return _error(request, what, sent=False)
        if isinstance(exc, aiohttp.InvalidURL):
            return _error(request, f"the URL {url} was refused before sending", sent=False)
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            what = f"no reply from {url}: nothing arrived for {self._read_timeout:g} s"
            return _error(request, what, sent=True)
        if isinstance(exc, aiohttp.ClientResponseError):
            # Its repr carries request_info (our headers): only its status and message are kept.
            detail = f"{exc.status}, {exc.message}" if exc.message else str(exc.status)
            return _error(request, f"the reply from {url} was malformed ({detail})", sent=True)
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return _error(request, f"the connection to {url} failed: {_reason(exc)}", sent=True)
        if isinstance(exc, RuntimeError):
            text = str(exc).lower()
            if "loop" in text and ("closed" in text or "different" in text):
                # A closed or foreign event loop fails before anything is written.
                what = f"could not send to {url}: the event loop cannot run it ({exc})"
                return _error(request, what, sent=False)
            # aiohttp's "Session is closed" / "Connection closed." when its session closes
            # under a request: whether anything left is unknown, so it counts as sent.
            what = f"the request to {url} ended: the aiohttp session was closed"
            return _error(request, what, sent=True)
        return None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """Read the body, refusing more than ``max_body`` bytes (a runaway gateway page).

        A compressed body is counted after decompression: its Content-Length says nothing
        of what it unpacks to.
        """
        length = response.content_length
        if length is not None and "Content-Encoding" not in response.headers:
            if length > self._max_body:
                raise self._too_large(response.status)
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self._max_body:
                raise self._too_large(response.status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, status: int) -> ResponseDecodeError:
        return ResponseDecodeError(
            f"the reply is larger than {self._max_body} bytes", status=status, is_json=False
        )

    # -- media ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def media(self, *, allow_private: bool, allow_loopback: bool) -> AsyncIterator[_Media]:
        """An aiohttp session of its own for one download: no default headers, ``auth``,
        cookies or middlewares of a borrowed session, and no decompression (the bytes
        Content-Length counts are the bytes stored), over a connector shared by concurrent
        downloads under the same address rule."""
        async with (
            self._media_connector(allow_private, allow_loopback) as connector,
            aiohttp.ClientSession(
                connector=connector,
                connector_owner=False,  # shared by concurrent downloads
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trace_configs=list(self._session.trace_configs) or None,
            ) as session,
        ):
            yield _Media(session, self._timeout)

    @contextlib.asynccontextmanager
    async def _media_connector(
        self, allow_private: bool, allow_loopback: bool
    ) -> AsyncIterator[aiohttp.TCPConnector]:
        key = (allow_private, allow_loopback)
        entry = self._media.get(key)
        if entry is None:
            resolver = None if allow_private else _CheckingResolver(allow_loopback=allow_loopback)
            entry = self._media[key] = (aiohttp.TCPConnector(limit=0, resolver=resolver), [0])
        connector, users = entry
        users[0] += 1
        try:
            yield connector
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._media[key]
                with anyio.CancelScope(shield=True):
                    await connector.close()


# What a broken connection, a timeout or a malformed reply raises while reading; aiohttp
# raises RuntimeError ("Connection closed.", "Session is closed") when its session closes.
_NETWORK = (aiohttp.ClientError, OSError, asyncio.TimeoutError, RuntimeError)
# What fails before the request is written.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)
_MEDIA_CHUNK = 64 * 1024


class _Media:
    """One download's media requests over its own aiohttp session."""

    __slots__ = ("_session", "_timeout")

    def __init__(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> None:
        self._session = session
        self._timeout = timeout

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[MediaReply]:
        """GET ``url`` with exactly ``headers``, following no redirect; a whole body leaves
        the connection to the pool, anything else closes it."""
        broken: BaseException | None = None
        try:
            response = await self._session.get(
                yarl.URL(url, encoded=url.isascii()),
                headers=dict(headers),
                allow_redirects=False,  # the download driver decides where to go next
                timeout=self._timeout,
                raise_for_status=False,
            )
        except AddressRefused:
            raise
        except _NETWORK as exc:
            broken = exc
        if broken is not None:
            raise media_error(url, broken, sent=not isinstance(broken, _NOT_SENT))
        try:
            yield MediaReply(
                status=response.status, headers=response.headers, body=_Body(url, response)
            )
        except BaseException:
            response.close()  # whatever is left of the body is never read
            raise
        response.release()  # pooled again if its body was read, else closed


class _Body:
    """A media reply's body in chunks of at most 64 KiB; a failure is a TransportError."""

    __slots__ = ("_response", "_url")

    def __init__(self, url: str, response: aiohttp.ClientResponse) -> None:
        self._url = url
        self._response = response

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        broken: BaseException | None = None
        try:
            chunk = await self._response.content.read(_MEDIA_CHUNK)
        except _NETWORK as exc:
            broken = exc
        if broken is not None:
            raise media_error(self._url, broken, sent=True)
        if not chunk:
            raise StopAsyncIteration
        return chunk


def media_error(url: str, exc: BaseException, *, sent: bool) -> TransportError:
    """The TransportError for a media request's failure, chained to it when that is safe (an
    aiohttp request_info would carry our headers); raised outside the ``except`` block."""
    error = TransportError(
        describe(exc), method="GET", path=yarl.URL(url, encoded=True).path, sent=sent
    )
    if holds_no_request(exc):
        error.__cause__ = exc
    return error


def describe(exc: BaseException) -> str:
    """An aiohttp failure in a few words, without the request it carries."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{exc.status}, {exc.message}" if exc.message else str(exc.status)
    if isinstance(exc, aiohttp.InvalidURL):
        return "aiohttp refused the URL"  # its text is the whole URL
    return str(exc) or type(exc).__name__


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
                raise AddressRefused(host, f"{address}, {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _error(request: HTTPRequest, message: str, *, sent: bool) -> TransportError:
    return TransportError(message, method=request.method, path=request.path, sent=sent)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the OS error aiohttp wraps in it, and what those chain, each once."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "os_error", None)  # ClientConnectorError and its kinds
        todo.extend(
            e
            for e in (wrapped, current.__cause__, current.__context__)
            if isinstance(e, BaseException)
        )


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words: no exception class, no ``ssl:default``, no
    OpenSSL source line."""
    causes = list(_causes(exc))
    for current in causes:
        if isinstance(current, ssl.SSLCertVerificationError):
            why = current.verify_message or "not trusted"
            return f"the server's TLS certificate was refused ({why})"
        if isinstance(current, ssl.SSLError) and not isinstance(current, aiohttp.ClientError):
            reason = current.reason or ""
            if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"):
                return "the TLS handshake failed: the server does not speak TLS there (http://?)"
            return f"the TLS handshake failed ({reason.replace('_', ' ').lower() or 'no reason'})"
        if isinstance(current, socket.gaierror):
            return "the host name was not found (DNS)"
        if isinstance(current, aiohttp.ServerDisconnectedError):
            return "the server closed the connection without a reply"
        if isinstance(current, aiohttp.ClientPayloadError):
            return "the reply broke off before its end"
    for current in causes:
        if isinstance(current, OSError) and not isinstance(current, aiohttp.ClientError):
            if current.errno is not None:
                return _ERRNO.get(current.errno) or os.strerror(current.errno).lower()
            if isinstance(current, (TimeoutError, asyncio.TimeoutError)):
                return "timed out"
    return str(exc) or type(exc).__name__


_ERRNO = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "the connection was reset by the server",
    errno.ETIMEDOUT: "timed out",
    errno.EPIPE: "the server closed the connection",
}
