"""The callback receiver as an ASGI 3 application (FastAPI, Starlette, any ASGI server).

A thin adapter, as ``_aiohttp_web`` is for aiohttp: the receiver's ``deliver`` decides; this
reads the token from the path and the body under the size cap (docs/callbacks.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "asgi_receiver"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_receiver(
    *,
    known: Callable[[str], bool],
    deliver: Callable[[str, bytes, Iterable[tuple[bytes, bytes]]], Awaitable[int]],
    limit: int,
    reasons: Mapping[int, str],
    headers: Mapping[int, tuple[tuple[str, str], ...]],
) -> ASGIApp:
    """``POST /{token}`` under the mount point (the token read from ``scope["path"]`` past
    ``scope["root_path"]``): 405 for another method, 404 for a token ``known`` refuses, 413
    past ``limit`` bytes, else what ``deliver`` answers; ``reasons`` and ``headers`` give
    each status its text and its extra headers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":  # served on its own: nothing to start or stop
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", "") or "")
        if root and path.startswith(root):
            path = path[len(root) :]
        token = path[1:] if path.startswith("/") else ""
        if scope.get("method") != "POST":
            await _reply(send, 405, reasons, headers, (b"allow", b"POST"))
            return
        if "/" in token or not known(token):
            await _reply(send, 404, reasons, headers)
            return
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await _reply(send, 413, reasons, headers)
                    return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _reply(send, 413, reasons, headers)
                return
            if not message.get("more_body", False):
                break
        status = await deliver(token, bytes(body), scope.get("headers", ()))
        await _reply(send, status, reasons, headers)

    return app


async def _reply(
    send: Send,
    status: int,
    reasons: Mapping[int, str],
    headers_of: Mapping[int, tuple[tuple[str, str], ...]],
    *headers: tuple[bytes, bytes],
) -> None:
    body = reasons.get(status, "").encode()
    headers += tuple((name.encode(), value.encode()) for name, value in headers_of.get(status, ()))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
