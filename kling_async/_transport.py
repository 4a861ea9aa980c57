"""The transport seam: what a session needs from an HTTP library, and nothing of Kling.

A `Transport` sends an API request and returns the whole reply (`send`), and opens a
`MediaClient` for one download (`media`), whose `MediaClient.stream` GETs a URL as a
`MediaReply` whose body arrives in chunks. A media request follows no redirect and carries
no credential: the download driver decides what a reply means. (A download holds its
`MediaClient` across its attempts and redirects, so that they can reuse connections.) Its
failures are `TransportError` (whose ``sent`` says whether the request may have reached the
server: docs/concepts.md, "Creates: retries, stamping and reconciliation") or, for a media
host whose name resolves to an address a download must not reach, `AddressRefused`.
``_aiohttp_transport`` implements it over aiohttp; ``kling_async.testing.MockTransport``
answers from a function.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import attrs

from .errors import ResponseDecodeError
from .sansio import HTTPRequest, HTTPResponse

__all__ = [
    "AddressRefused",
    "BoundedTransport",
    "MediaClient",
    "MediaReply",
    "Transport",
    "holds_no_request",
]


@attrs.frozen(kw_only=True)
class MediaReply:
    """A media host's reply: status and headers at once, the body as it arrives.

    ``headers`` ignore the case of names. ``body`` yields the bytes in chunks (never an empty
    one) and raises `TransportError` when the body breaks off.
    """

    status: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes]


class MediaClient(Protocol):
    """Media requests for one download, under one address rule."""

    def stream(
        self, url: str, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[MediaReply]:
        """GET ``url`` with exactly ``headers`` (no credential added, no redirect followed)."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Sends the session's requests: API calls whole, media downloads streamed."""

    @property
    def closed(self) -> bool:
        """True once nothing more can be sent (a borrowed HTTP session was closed, say)."""
        ...

    async def send(self, request: HTTPRequest, authorization: str) -> HTTPResponse:
        """Send ``request`` with the ``Authorization`` value and return the whole reply."""
        ...

    def media(
        self, *, allow_private: bool, allow_loopback: bool
    ) -> AbstractAsyncContextManager[MediaClient]:
        """A `MediaClient` for one download, closed when the download ends.

        Unless ``allow_private``, every address a media host's name resolves to is checked
        before connecting (loopback is allowed with ``allow_loopback``); a refused one raises
        `AddressRefused` from `MediaClient.stream` and nothing is sent.
        """
        ...


class BoundedTransport:
    """A transport given to a session, its API replies held to ``max_response_bytes``
    (docs/concepts.md: a larger reply is refused as not JSON), as the aiohttp transport
    holds them while reading."""

    __slots__ = ("_inner", "_max_body")

    def __init__(self, inner: Transport, max_body: int) -> None:
        self._inner = inner
        self._max_body = max_body

    @property
    def closed(self) -> bool:
        """Whether the given transport is closed."""
        return self._inner.closed

    async def send(self, request: HTTPRequest, authorization: str) -> HTTPResponse:
        """The given transport's reply, refused when its body is over the cap."""
        response = await self._inner.send(request, authorization)
        if len(response.body) > self._max_body:
            raise ResponseDecodeError(
                f"the reply is larger than {self._max_body} bytes",
                status=response.status,
                is_json=False,
            )
        return response

    def media(
        self, *, allow_private: bool, allow_loopback: bool
    ) -> AbstractAsyncContextManager[MediaClient]:
        """The given transport's media client (downloads have their own cap)."""
        return self._inner.media(allow_private=allow_private, allow_loopback=allow_loopback)


class AddressRefused(Exception):
    """The media host's name resolves to an address a download must not connect to (not an
    OSError, so that an HTTP library passes it through instead of retrying the look-up)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {reason}")


def holds_no_request(exc: BaseException) -> bool:
    """Whether ``exc`` and what it chains are safe to keep as a cause: an HTTP library's
    ``request_info`` (aiohttp's ClientResponseError) carries our request headers, credential
    and all."""
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
