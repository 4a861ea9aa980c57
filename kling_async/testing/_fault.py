"""Fault values the emulator can inject into its next replies, media downloads and callbacks.

A `Fault` describes one way a reply can go wrong: a Kling error envelope, a gateway's HTML page
or string-coded envelope, a truncated or cut-off body, a delay, a dropped connection or a lost
reply; for media, also chunked bodies and ignored ``Range`` headers; for callbacks, lost,
duplicated, reordered, delayed or early deliveries, a forged signature or a stale timestamp.
Faults are plain frozen values, so tests can build them up front and compare them with the
request and callback logs afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

__all__ = ["Fault"]

# Default business code for an HTTP status, as Kling pairs them (docs/errors.md, "Which Kling
# code raises which class").
_DEFAULT_CODES: dict[int, int] = {
    400: 1201,
    401: 1000,
    403: 1103,
    404: 1203,
    429: 1302,
    500: 5000,
    503: 5001,
    504: 5002,
}

# Kinds whose request is processed normally (the fault only changes what the client sees).
PROCESSING_KINDS = frozenset(
    {"truncated", "delay", "reply_lost", "cut", "chunked", "range_ignored"}
)
# Which kinds make sense on which routes; `KlingEmulator.inject` refuses the other pairs.
API_KINDS = frozenset(
    {
        "http",
        "business",
        "html",
        "gateway",
        "raw",
        "drop",
        "delay",
        "truncated",
        "reply_lost",
        "cut",
        "chunked",
    }
)
MEDIA_KINDS = frozenset(
    {"http", "html", "raw", "drop", "delay", "truncated", "cut", "chunked", "range_ignored"}
)
CALLBACK_KINDS = frozenset(
    {
        "callback_lost",
        "callback_duplicated",
        "callback_reordered",
        "callback_delayed",
        "callback_before_reply",
        "callback_bad_signature",
        "callback_stale",
    }
)


def default_code(status: int) -> int:
    """The Kling business code that usually comes with `status`."""
    if status in _DEFAULT_CODES:
        return _DEFAULT_CODES[status]
    return 5000 if status >= 500 else 1200


def _headers_tuple(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    return tuple((str(k), str(v)) for k, v in headers.items())


def _check_status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"HTTP status must be an int in 100..599, got {status!r}")
    return status


def _check_seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
    return float(seconds)


def _check_retry_after(retry_after: int | str | None) -> int | str | None:
    if retry_after is None or isinstance(retry_after, str):
        return retry_after
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise ValueError(f"retry_after must be a non-negative int or a str, got {retry_after!r}")
    return retry_after


@attrs.frozen(kw_only=True, repr=False)
class Fault:
    """One injected misbehaviour; build it with the classmethods (`Fault.http(503)`, ...).

    `kind` is one of ``http``, ``business``, ``html``, ``gateway``, ``raw`` (a reply sent
    instead of processing the request), ``drop`` (connection closed before processing),
    ``truncated``, ``cut``, ``chunked``, ``delay``, ``reply_lost`` and ``range_ignored`` (the
    request is processed normally first), or one of the ``callback_*`` kinds, which apply to
    callbacks (``inject(..., route="callback")``) instead of requests.
    """

    kind: str
    status: int | None = None
    code: int | str | None = None
    message: str | None = None
    retry_after: int | str | None = None
    seconds: float | None = None
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    after: int | None = None

    @classmethod
    def http(
        cls,
        status: int,
        code: int | None = None,
        *,
        message: str | None = None,
        retry_after: int | str | None = None,
    ) -> Fault:
        """A Kling error envelope with HTTP `status`; the request is not processed.

        On the media route, the status comes with a storage-style XML error body instead.

        `code` defaults to the business code Kling pairs with the status (429 -> 1302,
        503 -> 5001, ...). `retry_after` adds a ``Retry-After`` header (seconds or any string,
        such as an HTTP date).
        """
        _check_status(status)
        return cls(
            kind="http",
            status=status,
            code=default_code(status) if code is None else code,
            message=message,
            retry_after=_check_retry_after(retry_after),
        )

    @classmethod
    def rate_limited(cls, code: int = 1302, *, retry_after: int | str | None = None) -> Fault:
        """HTTP 429 with a rate-limit code (1302 too frequent, 1303 too many parallel tasks)."""
        return cls.http(429, code, retry_after=retry_after)

    @classmethod
    def business(cls, code: int, *, status: int = 200, message: str | None = None) -> Fault:
        """A non-zero business code, by default with HTTP 200 (as some gateways answer)."""
        _check_status(status)
        return cls(kind="business", status=status, code=code, message=message)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """An nginx-style HTML error page (``text/html``), like a proxy in front of Kling."""
        _check_status(status)
        return cls(kind="html", status=status, content_type="text/html")

    @classmethod
    def gateway(
        cls, code: str = "upstream_error", *, status: int = 500, message: str | None = None
    ) -> Fault:
        """A new-api style envelope: ``{"code": "<string>", "message": ..., "data": null}``."""
        _check_status(status)
        return cls(kind="gateway", status=status, code=str(code), message=message)

    @classmethod
    def truncated(cls) -> Fault:
        """Process the request, then send only the first half of the JSON body (HTTP 200)."""
        return cls(kind="truncated")

    @classmethod
    def cut(cls, after: int | None = None) -> Fault:
        """Process the request, then close the connection partway through the body.

        The headers announce the whole body's ``Content-Length``; the connection closes after
        `after` bytes of it (default half, and always short of the whole body).
        """
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int) or after < 0
        ):
            raise ValueError(f"after must be None or an int >= 0, got {after!r}")
        return cls(kind="cut", after=after)

    @classmethod
    def chunked(cls) -> Fault:
        """Process the request and send the normal reply without ``Content-Length`` (chunked)."""
        return cls(kind="chunked")

    @classmethod
    def range_ignored(cls) -> Fault:
        """Media only: answer 200 with the whole body whatever the ``Range`` header says.

        As a server without range support does: no ``Accept-Ranges`` header either.
        """
        return cls(kind="range_ignored")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep `seconds`, then process the request normally (to exercise client timeouts)."""
        return cls(kind="delay", seconds=_check_seconds(seconds))

    @classmethod
    def callback_lost(cls) -> Fault:
        """Callbacks only: the callback is never delivered (it is still logged)."""
        return cls(kind="callback_lost")

    @classmethod
    def callback_duplicated(cls) -> Fault:
        """Callbacks only: the callback is delivered twice, one POST after the other."""
        return cls(kind="callback_duplicated")

    @classmethod
    def callback_reordered(cls) -> Fault:
        """Callbacks only: hold the callback back until the task's next callback is sent.

        A later status thus arrives first; `KlingEmulator.drain_callbacks` releases what is
        still held.
        """
        return cls(kind="callback_reordered")

    @classmethod
    def callback_delayed(cls, seconds: float) -> Fault:
        """Callbacks only: deliver the callback `seconds` late (closing cuts the wait short).

        The task's later callbacks do not wait for it, so a long delay reorders them too.
        """
        return cls(kind="callback_delayed", seconds=_check_seconds(seconds))

    @classmethod
    def callback_before_reply(cls) -> Fault:
        """Callbacks only: deliver the callback before the reply of the request that caused it.

        The ``submitted`` callback of a create (or the one of a change a query revealed) is
        sent and its answer awaited before the create's reply goes out. Callbacks that no
        request causes (time-driven, `set_status`) skip this fault.
        """
        return cls(kind="callback_before_reply")

    @classmethod
    def callback_bad_signature(cls) -> Fault:
        """Callbacks only: signed with a key nobody has (well-formed headers, no match).

        Sent even by an emulator without ``webhook_secret``: a forger's callback.
        """
        return cls(kind="callback_bad_signature")

    @classmethod
    def callback_stale(cls, seconds: float = 600.0) -> Fault:
        """Callbacks only: correctly signed, with a ``webhook-timestamp`` `seconds` old (a
        replayed callback; a receiver refuses one more than 5 minutes from now)."""
        return cls(kind="callback_stale", seconds=_check_seconds(seconds))

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without a reply, before processing (nothing is created)."""
        return cls(kind="drop")

    @classmethod
    def reply_lost(cls) -> Fault:
        """Process the request (a create does create its task), then close without a reply."""
        return cls(kind="reply_lost")

    @classmethod
    def raw(
        cls,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Send exactly this status, body and content type; the request is not processed."""
        _check_status(status)
        if not isinstance(body, (bytes, bytearray)):
            raise TypeError(f"body must be bytes, got {type(body).__name__}")
        return cls(
            kind="raw",
            status=status,
            body=bytes(body),
            content_type=content_type,
            headers=_headers_tuple(headers),
        )

    @property
    def processes_request(self) -> bool:
        """Whether the emulator still handles the request (creating tasks, counting polls).

        Always False for the ``callback_*`` kinds, which do not apply to requests.
        """
        return self.kind in PROCESSING_KINDS

    def __repr__(self) -> str:
        parts: list[str] = []
        for field in attrs.fields(Fault):
            if field.name == "kind":
                continue
            value = getattr(self, field.name)
            if value is None or value == ():
                continue
            if field.name == "body" and isinstance(value, bytes) and len(value) > 40:
                value = value[:40] + b"..."
            parts.append(f"{field.name}={value!r}")
        return f"Fault.{self.kind}({', '.join(parts)})"
