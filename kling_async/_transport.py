"""The only module that speaks aiohttp on the client side: send one request, translate failures.

It knows nothing of Kling: it sends an `HTTPRequest`, reads the body under a size cap, and
turns every aiohttp or socket failure into a `TransportError` whose ``sent`` says whether the
request may have reached the server (api.md "Create retries": a refused connection certainly
did not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from .errors import ResponseDecodeError, TransportError
from .sansio import HTTPRequest, HTTPResponse

__all__ = ["Transport", "open_http_session"]

USER_AGENT = f"kling_async/0.1 aiohttp/{aiohttp.__version__}"
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


class Transport:
    """Sends requests over one ``aiohttp.ClientSession`` with per-request socket timeouts."""

    __slots__ = ("_max_body", "_session", "_timeout")

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

    @property
    def closed(self) -> bool:
        """True once the aiohttp session is closed (by us, or by its owner if borrowed)."""
        return self._session.closed

    async def send(self, request: HTTPRequest, authorization: str) -> HTTPResponse:
        """Send ``request`` with ``authorization`` and return the whole reply."""
        headers = dict(request.headers)
        headers["Authorization"] = authorization
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,  # a borrowed session's own setting would hide the reply
            ) as response:
                body = await self._read(response)
                return HTTPResponse(status=response.status, body=body, headers=response.headers)
        except aiohttp.ClientConnectorError as exc:
            # DNS, refused connection, TLS handshake: the request never left.
            raise self._error(request, exc, "could not connect", sent=False) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise self._error(request, exc, "timed out connecting", sent=False) from exc
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise self._error(request, exc, "timed out waiting for the reply", sent=True) from exc
        except aiohttp.ClientResponseError as exc:
            # Not chained: its request_info repr carries our request headers, Authorization too.
            raise self._error(request, exc, "the reply was malformed", sent=True) from None
        except aiohttp.ClientError as exc:
            raise self._error(request, exc, "the connection failed", sent=True) from exc
        except OSError as exc:
            raise self._error(request, exc, "the connection failed", sent=True) from exc
        except RuntimeError as exc:
            # aiohttp's "Session is closed" / "Connection closed." when its session closes
            # under a request: whether anything left is unknown, so it counts as sent.
            raise self._error(request, exc, "the aiohttp session was closed", sent=True) from exc

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

    @staticmethod
    def _error(
        request: HTTPRequest, exc: BaseException, what: str, *, sent: bool
    ) -> TransportError:
        detail = str(exc) or type(exc).__name__
        return TransportError(
            f"{request.method} {request.path}: {what}: {detail}",
            method=request.method,
            path=request.path,
            sent=sent,
        )
