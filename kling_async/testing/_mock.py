"""`MockTransport`: a session's HTTP answered by a function, with no sockets and no emulator."""

from __future__ import annotations

import contextlib
import inspect
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from kling_async._transport import MediaReply
from kling_async.sansio import HTTPRequest, HTTPResponse

__all__ = ["MockTransport"]

Handler = Callable[[HTTPRequest], "HTTPResponse | Awaitable[HTTPResponse]"]
_CHUNK = 64 * 1024


class MockTransport:
    """A transport that answers every request by calling ``handler(request)``.

    Pass it as ``KlingSession(..., transport=MockTransport(handler))``. ``handler`` is a plain
    or async function of an `HTTPRequest` that returns an `HTTPResponse`. API requests reach
    it with their ``Authorization`` header; media downloads as a GET of the video's URL
    (with ``Range`` when resuming), whose reply body is the file's bytes. Whatever the
    handler raises reaches the caller as raised; raise `TransportError` to act out a network
    failure. Nothing is checked about addresses: no name is resolved.

    Added in version 0.3.
    """

    def __init__(self, handler: Handler) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self._handler = handler
        self.requests: list[HTTPRequest] = []
        """Every request the handler was given, in order."""

    def __repr__(self) -> str:
        return f"<MockTransport {self._handler!r}>"

    @property
    def closed(self) -> bool:
        """Never: a mock has nothing to close."""
        return False

    async def send(self, request: HTTPRequest, authorization: str) -> HTTPResponse:
        """Answer an API request (``Authorization`` added to its headers) with the handler."""
        headers = (*request.headers, ("Authorization", authorization))
        return await self._answer(
            HTTPRequest(
                method=request.method,
                url=request.url,
                path=request.path,
                headers=headers,
                body=request.body,
            )
        )

    @contextlib.asynccontextmanager
    async def media(self, *, allow_private: bool, allow_loopback: bool) -> AsyncIterator[_Media]:
        """Media requests for one download, answered by the handler."""
        yield _Media(self)

    async def _answer(self, request: HTTPRequest) -> HTTPResponse:
        self.requests.append(request)
        response = self._handler(request)
        if inspect.isawaitable(response):
            response = await response
        if not isinstance(response, HTTPResponse):
            raise TypeError(
                f"the MockTransport handler must return an HTTPResponse, not "
                f"{type(response).__name__}"
            )
        return response


class _Media:
    """One download's media requests, answered by a MockTransport's handler."""

    def __init__(self, transport: MockTransport) -> None:
        self._transport = transport

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[MediaReply]:
        """The handler's reply to a GET of ``url``, its body in chunks."""
        request = HTTPRequest(
            method="GET",
            url=url,
            path=urllib.parse.urlsplit(url).path,
            headers=tuple(headers.items()),
        )
        response = await self._transport._answer(request)
        yield MediaReply(
            status=response.status,
            headers=CIMultiDictProxy(CIMultiDict(response.headers)),
            body=_Chunks(response.body),
        )


class _Chunks:
    """A body's bytes in chunks."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._at = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._at >= len(self._body):
            raise StopAsyncIteration
        chunk = self._body[self._at : self._at + _CHUNK]
        self._at += len(chunk)
        return chunk
