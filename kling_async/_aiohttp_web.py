"""The callback receiver served by ``aiohttp.web``: the server side's only aiohttp code.

Like the client's transport (``_aiohttp_transport``), it only adapts: it refuses an unknown
token before reading anything, reads the body under the receiver's cap, and hands the
token, the body and the headers (a signature's) to the receiver, which decides the reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from aiohttp import web

__all__ = ["receiver_app"]


def receiver_app(
    *,
    known: Callable[[str], bool],
    deliver: Callable[[str, bytes, Iterable[tuple[str, str]]], Awaitable[int]],
    limit: int,
    reasons: Mapping[int, str],
    headers: Mapping[int, Sequence[tuple[str, str]]],
) -> web.Application:
    """An application serving ``POST /{token}``: 404 for a token ``known`` refuses, 413 for a
    body over ``limit`` bytes, else what ``deliver`` answers (``reasons`` give the text,
    ``headers`` the extra headers of a status, such as a 503's Retry-After); ``deliver``
    gets the request's headers too, for a signature."""

    def reply(status: int) -> web.Response:
        extra = dict(headers.get(status, ()))
        return web.Response(status=status, text=reasons.get(status, ""), headers=extra)

    async def handle(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not known(token):
            return reply(404)
        length = request.content_length
        if length is not None and length > limit:
            return reply(413)
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return reply(413)
        return reply(await deliver(token, bytes(body), request.headers.items()))

    app = web.Application()
    app.router.add_post("/{token}", handle)
    return app
