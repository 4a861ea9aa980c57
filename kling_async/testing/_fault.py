"""Fault values the emulator can inject into its next replies.

A `Fault` describes one way a reply can go wrong: a Kling error envelope, a gateway's HTML page
or string-coded envelope, a truncated body, a delay, a dropped connection or a lost reply.
Faults are plain frozen values, so tests can build them up front and compare them with the
request log afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

__all__ = ["Fault"]

# Default business code for an HTTP status, as Kling pairs them (see api.md "Errors").
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
PROCESSING_KINDS = frozenset({"truncated", "delay", "reply_lost"})


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
    ``truncated``, ``delay`` and ``reply_lost`` (the request is processed normally first).
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
    def delay(cls, seconds: float) -> Fault:
        """Sleep `seconds`, then process the request normally (to exercise client timeouts)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        return cls(kind="delay", seconds=float(seconds))

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
        """Whether the emulator still handles the request (creating tasks, counting polls)."""
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
