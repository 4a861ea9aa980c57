"""A Kling video-extend server on loopback, with fault injection, for tests.

`KlingEmulator` runs a real `aiohttp.web` server that answers like Kling (official paths and
the gateway's ``/kling`` prefix), keeps every request, callback and task for inspection, moves
tasks through their statuses (by polls, by time, or by hand), POSTs callbacks and serves the
result videos from a second loopback origin (the "media host"). It shares no code with the SDK
on purpose: it is an independent peer to test the SDK against.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import heapq
import http
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiohttp
import attrs
from aiohttp import web

from kling_async.testing._auth import check_authorization
from kling_async.testing._fault import API_KINDS, CALLBACK_KINDS, MEDIA_KINDS, Fault
from kling_async.testing._records import (
    PARENT_DURATION,
    EmulatedTask,
    RecordedCallback,
    RecordedRequest,
)
from kling_async.testing._signing import signature_headers, webhook_keys
from kling_async.testing._sources import (
    EXTEND,
    FAMILIES,
    SourceRefusal,
    read_source_create,
)

__all__ = ["KlingEmulator"]

# Each task family's routes: /v1/videos/<family>[/<id>] (extend, text2video, image2video).
_FAMILY_SEGMENTS: Final[dict[tuple[str, ...], str]] = {
    ("v1", "videos", family): family for family in FAMILIES
}
_GATEWAY_PREFIX: Final = "/kling"
_ROUTES: Final = frozenset({"create", "query", "list", "media", "other"})
_API_ROUTES: Final = frozenset({"create", "query", "list"})
_INJECT_ROUTES: Final = frozenset({"create", "query", "list", "any", "media", "callback"})
_LIST_MODES: Final = frozenset({"ok", "404", "html"})
_RUNNING: Final = frozenset({"submitted", "processing"})
_FINAL: Final = frozenset({"succeed", "failed"})
# Progress of an automatically advanced task: 0 submitted, 1 processing, 2 finished.
_STAGES: Final = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}
_MAX_TEXT: Final = 2500
EXTEND_SECONDS: Final = 4.1  # what each extend adds to its source (Kling: 4-5 s)
MAX_EXTENDED_SECONDS: Final = 180.0  # Kling: an extended video may not exceed 3 minutes
_CALLBACK_TIMEOUT: Final = 10.0
_SHUTDOWN_TIMEOUT: Final = 2.0
# The background ticker wakes at the next deadline, but at least this often (a replaced clock
# may jump at any time) and at most this often (no busy loop when deadlines pile up).
_TICK_MAX: Final = 0.05
_TICK_MIN: Final = 0.001
_CHUNK: Final = 16 * 1024
_NO_JSON: Final = object()
_RANGE: Final = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)

_MESSAGES: Final = {
    1000: "Authentication failed",
    1001: "Authorization is empty",
    1002: "Authorization is invalid",
    1003: "Authorization is not yet valid",
    1004: "Authorization has expired",
    1100: "Account exception",
    1101: "Account in arrears",
    1102: "Resource pack exhausted or expired",
    1103: "No permission to access the requested resource",
    1200: "Invalid request",
    1201: "Invalid request parameters",
    1202: "Invalid request method",
    1203: "Requested resource does not exist",
    1300: "Trigger platform strategy",
    1301: "Trigger content security policy",
    1302: "Requests too frequent, please slow down",
    1303: "Parallel tasks over resource pack limit",
    1304: "Trigger IP whitelisting policy",
    5000: "Server internal error",
    5001: "Server temporarily unavailable",
    5002: "Server internal timeout",
}

# Error codes of an object store in front of the media, as its XML error pages name them.
_STORAGE_CODES: Final = {403: "AccessDenied", 404: "NoSuchKey", 410: "ObjectExpired"}

_LIST_HTML_PAGE: Final = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>API Gateway</title>'
    b"</head><body><noscript>You need to enable JavaScript to run this app.</noscript>"
    b'<div id="root"></div></body></html>'
)


@attrs.frozen(kw_only=True)
class _Reply:
    """A decided reply: status, body and headers, not yet sent."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@attrs.define(kw_only=True)
class _Injection:
    fault: Fault
    route: str
    remaining: int | None  # None: no count, only the time window bounds it
    until: float | None = None  # `clock` time the window ends, None: no window


@attrs.frozen(kw_only=True)
class _Callback:
    """A callback waiting to be sent: where, what, and the fault it took."""

    task_id: str
    url: str
    body: dict[str, Any]
    fault: Fault | None
    # One per callback: its redeliveries (Fault.callback_duplicated) carry the same id.
    webhook_id: str = attrs.field(factory=lambda: f"msg_{secrets.token_hex(12)}")


class _BadRequest(Exception):
    """A request that fails validation; carries the HTTP status, code and message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _new_request_id() -> str:
    return str(uuid.uuid4())


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _envelope(
    status: int,
    code: int,
    message: str | None = None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
) -> _Reply:
    """A Kling error reply: ``{code, message, request_id}``, without ``data``.

    Only gateways add ``data: null`` (see `Fault.gateway`), so a client that takes "data
    present" for success is caught (docs/testing.md, "What it answers").
    """
    body = {
        "code": code,
        "message": _MESSAGES.get(code, "Error") if message is None else message,
        "request_id": _new_request_id(),
    }
    return _Reply(status=status, body=_json_bytes(body), headers=headers)


def _success(data: Any) -> _Reply:
    body = {"code": 0, "message": "SUCCEED", "request_id": _new_request_id(), "data": data}
    return _Reply(status=200, body=_json_bytes(body))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _nginx_page(status: int) -> bytes:
    title = f"{status} {_reason(status)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode("ascii")


def _storage_error(status: int, message: str | None) -> bytes:
    code = _STORAGE_CODES.get(status, _reason(status).replace(" ", ""))
    text = _reason(status) if message is None else message
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{text}</Message>"
        f"<RequestId>{_new_request_id()}</RequestId></Error>\n"
    ).encode()


def _retry_after(fault: Fault) -> tuple[tuple[str, str], ...]:
    return () if fault.retry_after is None else (("Retry-After", str(fault.retry_after)),)


def _fault_reply(fault: Fault, *, media: bool) -> _Reply:
    """The reply a non-processing fault sends instead of handling the request."""
    status = fault.status if fault.status is not None else 500
    if fault.kind == "http" and media:
        return _Reply(
            status=status,
            body=_storage_error(status, fault.message),
            content_type="application/xml",
            headers=_retry_after(fault),
        )
    if fault.kind in ("http", "business"):
        code = fault.code if isinstance(fault.code, int) else 5000
        return _envelope(status, code, fault.message, headers=_retry_after(fault))
    if fault.kind == "html":
        return _Reply(status=status, body=_nginx_page(status), content_type="text/html")
    if fault.kind == "gateway":
        message = fault.message
        if message is None:
            message = f"upstream error: {_reason(status).lower()} (request id {_new_request_id()})"
        body = {"code": str(fault.code), "message": message, "data": None}
        return _Reply(status=status, body=_json_bytes(body))
    if fault.kind == "raw":
        return _Reply(
            status=status,
            body=fault.body or b"",
            content_type=fault.content_type or "application/octet-stream",
            headers=fault.headers,
        )
    raise AssertionError(f"fault {fault!r} has no reply of its own")  # pragma: no cover


def _path_segments(raw_target: str) -> tuple[str, list[str]]:
    """Split a raw request target into its raw path and its percent-decoded segments.

    Literal ``.`` and ``..`` segments are resolved (RFC 3986 5.2.4); escaped ones such as
    ``%2E%2E`` and escaped slashes (``a%2Fb``) are data inside one segment.
    """
    raw_path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if not raw_path.startswith("/"):  # absolute-form target: http://host/path
        raw_path = urlsplit(raw_path).path or "/"
    segments: list[str] = []
    for segment in raw_path[1:].split("/"):
        if segment == ".":
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return raw_path, [unquote(segment, errors="replace") for segment in segments]


def _classify(method: str, segments: list[str]) -> tuple[str, str | None, bool, str]:
    """Map decoded path segments to ``(route, task id or media name, under /v1, family)``.

    Kling checks credentials before routing on everything under ``/v1`` (or ``/kling/v1``).
    """
    if segments[:1] == ["kling"]:
        segments = segments[1:]
    under_v1 = segments[:1] == ["v1"]
    family = _FAMILY_SEGMENTS.get(tuple(segments[:3]))
    if family is not None:
        rest = segments[3:]
        if not rest:
            if method == "POST":
                return "create", None, under_v1, family
            if method == "GET":
                return "list", None, under_v1, family
        elif len(rest) == 1 and rest[0] and method == "GET":
            return "query", rest[0], under_v1, family
        return "other", None, under_v1, family
    if len(segments) == 2 and segments[0] == "media" and segments[1] and method in ("GET", "HEAD"):
        return "media", segments[1], False, EXTEND
    return "other", None, under_v1, EXTEND


@functools.lru_cache(maxsize=32)
def _media_content(video_id: str, size: int) -> bytes:
    """Deterministic bytes for a video, `size` in all.

    An MP4 ``ftyp`` box, then an ``mdat`` box whose payload is SHAKE-256 of the id.
    """
    ftyp = (24).to_bytes(4, "big") + b"ftypmp42" + bytes(4) + b"mp42isom"
    mdat = max(size - len(ftyp), 0).to_bytes(4, "big") + b"mdat"
    head = ftyp + mdat
    payload = hashlib.shake_256(b"kling-emulator/" + video_id.encode()).digest(
        max(size - len(head), 0)
    )
    return (head + payload)[:size]


def _parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """The ``(first, last)`` bytes of a single ``bytes=`` range, or False if unsatisfiable.

    None when the header is not one we honour: then the whole body is sent, as RFC 9110 allows.
    """
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return False
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        return False
    return first, size - 1 if not last_text else min(int(last_text), size - 1)


def _optional_text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRequest(400, 1201, f"{name} must be a string")
    if len(value) > _MAX_TEXT:
        raise _BadRequest(400, 1201, f"{name} must be at most {_MAX_TEXT} characters")
    return value


def _optional_id(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRequest(400, 1201, f"{name} must be a string")
    return value


def _validate_cfg_scale(body: Mapping[str, Any]) -> float | None:
    value = body.get("cfg_scale")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _BadRequest(400, 1201, "cfg_scale must be a number")
    if not 0 <= value <= 1:
        raise _BadRequest(400, 1201, "cfg_scale must be between 0 and 1")
    return float(value)


def _validate_callback_url(body: Mapping[str, Any]) -> str | None:
    value = body.get("callback_url")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRequest(400, 1201, "callback_url must be a string")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise _BadRequest(400, 1201, "callback_url must be an http(s) URL") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _BadRequest(400, 1201, "callback_url must be an http(s) URL")
    return value


def _validate_watermark(body: Mapping[str, Any]) -> bool | None:
    """``watermark_info: {"enabled": bool}`` (docs/testing.md, "Watermarks and deductions")."""
    value = body.get("watermark_info")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _BadRequest(400, 1201, "watermark_info must be an object")
    enabled = value.get("enabled")
    if not isinstance(enabled, bool):
        raise _BadRequest(400, 1201, "watermark_info.enabled must be a boolean")
    return enabled


def _page_param(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise _BadRequest(400, 1201, f"{name} must be an integer") from exc
    if not 1 <= value <= maximum:
        raise _BadRequest(400, 1201, f"{name} must be between 1 and {maximum}")
    return value


def _check_durations(value: Any) -> tuple[float, float]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"task_seconds must return (submitted, processing), got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise TypeError(f"task_seconds must return two numbers, got {value!r}")
        if not math.isfinite(item) or item < 0:
            raise ValueError(f"task_seconds must return finite numbers >= 0, got {value!r}")
    return float(value[0]), float(value[1])


class KlingEmulator:
    """A Kling video-extend API on loopback, for tests of clients such as this SDK.

    Use it as ``async with KlingEmulator() as emu:`` and point a client at `base_url`
    (official style) or `gateway_url` (``/kling`` prefix). Both a gateway API key
    (``Bearer <api_key>``) and an official HS256 JWT (``iss`` = `access_key`, signed with
    `secret_key`) are accepted. Result and parent videos are served, without credentials,
    from `media_url`: a second port standing for Kling's media host.

    Tasks advance when a client looks at them (a query, or a list page that holds them):
    `polls_to_start` looks show ``submitted``, the next
    `polls_to_finish` looks show ``processing``, later ones the final status (``succeed``, or
    ``failed`` for videos passed to `fail_video`). With `step_seconds` (or, per task,
    `task_seconds`) they advance by time instead (measured with `clock`). `auto_advance=False`
    leaves them to `set_status`.

    `inject` queues faults for the next matching requests or callbacks; `requests`, `tasks`,
    `count` and `callbacks` let a test check what the client really did.

    With `webhook_secret` (a ``whsec_<base64>`` secret, or several for a rotation) every
    callback is signed as Kling signs it (``webhook-id``, ``webhook-timestamp`` on `clock`,
    ``webhook-signature`` with one ``v1,`` signature per secret).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        media_port: int = 0,
        api_key: str = "test-key",
        access_key: str = "test-access-key",
        secret_key: str = "test-secret-key",
        polls_to_start: int = 1,
        polls_to_finish: int = 1,
        step_seconds: float | None = None,
        task_seconds: Callable[[EmulatedTask], tuple[float, float]] | None = None,
        auto_advance: bool = True,
        max_running: int | None = None,
        list_mode: str = "ok",
        require_parent_task_id: bool = False,
        accept_external_task_id: bool = True,
        media_bytes: int = 256 * 1024,
        unit_deduction: str | None = "1",
        cash_deduction: str | None = None,
        list_price: str | None = None,
        webhook_secret: str | Sequence[str] | None = None,
    ) -> None:
        if polls_to_start < 0 or polls_to_finish < 0:
            raise ValueError("polls_to_start and polls_to_finish must be >= 0")
        if step_seconds is not None and (not math.isfinite(step_seconds) or step_seconds < 0):
            raise ValueError("step_seconds must be None or a finite number >= 0")
        if task_seconds is not None and not callable(task_seconds):
            raise TypeError("task_seconds must be None or a callable")
        if max_running is not None and max_running < 0:
            raise ValueError("max_running must be None or >= 0")
        if list_mode not in _LIST_MODES:
            raise ValueError(f"list_mode must be one of {sorted(_LIST_MODES)}, got {list_mode!r}")
        if isinstance(media_bytes, bool) or not isinstance(media_bytes, int) or media_bytes < 0:
            raise ValueError(f"media_bytes must be an int >= 0, got {media_bytes!r}")
        for name, amount in (
            ("unit_deduction", unit_deduction),
            ("cash_deduction", cash_deduction),
            ("list_price", list_price),
        ):
            if amount is not None and not isinstance(amount, str):
                raise TypeError(f"{name} must be None or a string, as Kling sends it")
        self.host = host
        self.port = port
        self.media_port = media_port
        self.api_key = api_key
        self.access_key = access_key
        self.secret_key = secret_key
        self.polls_to_start = polls_to_start
        self.polls_to_finish = polls_to_finish
        self.step_seconds = step_seconds
        self.task_seconds = task_seconds
        self.auto_advance = auto_advance
        self.max_running = max_running
        self.list_mode = list_mode
        self.require_parent_task_id = require_parent_task_id
        self.accept_external_task_id = accept_external_task_id
        self.media_bytes = media_bytes
        self.unit_deduction = unit_deduction
        self.cash_deduction = cash_deduction
        self.list_price = list_price
        self._webhook_keys = webhook_keys(webhook_secret)
        self.clock: Callable[[], float] = time.time
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, EmulatedTask] = {}
        self.callbacks: list[RecordedCallback] = []
        self._order: list[str] = []  # task ids in creation order, for paging newest first
        self._orders: dict[str, list[str]] = {}  # the same, per task family (its list route)
        self._running: set[str] = set()  # ids of tasks submitted or processing (1303 check)
        self._deadlines: list[tuple[float, int, int, str]] = []  # (at, stage, index, task id)
        self._by_external_id: dict[str, str] = {}
        self._failed_videos: dict[str, str] = {}
        self._forgotten_videos: set[str] = set()
        # Refused sources (docs/testing.md, "Refused source videos"): expired videos, videos
        # of a retired model (the model's name), and the lengths of the videos it knows.
        self._expired_videos: set[str] = set()
        self._retired_videos: dict[str, str] = {}
        self._video_durations: dict[str, float] = {}
        self._injections: list[_Injection] = []
        self._runners: list[web.AppRunner] = []
        self._base_url: str | None = None
        self._media_url: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._callback_chain: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, list[_Callback]] = {}
        # While a request is dispatched (synchronously), the callbacks it must await.
        self._reply_waits: list[asyncio.Task[None]] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> KlingEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start serving on `host`/`port` and `host`/`media_port` (0 picks a free port)."""
        if self._runners:
            raise RuntimeError("the emulator is already running")
        try:
            self._base_url = await self._serve_on(self.port, media=False)
            self._media_url = await self._serve_on(self.media_port, media=True)
        except BaseException:
            for runner in self._runners:
                await runner.cleanup()
            self._runners, self._base_url, self._media_url = [], None, None
            raise
        self.port = int(self._runners[0].addresses[0][1])
        self.media_port = int(self._runners[1].addresses[0][1])
        self._closing = asyncio.Event()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_CALLBACK_TIMEOUT))
        for task in self.tasks.values():
            task.media_base_url = self._media_url
        if self._deadlines:  # restarted with time-driven tasks still running
            self._start_ticker()

    async def _serve_on(self, port: int, *, media: bool) -> str:
        app = web.Application()
        handler = self._handle_media_host if media else self._handle
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT, handler_cancellation=False
        )
        await runner.setup()
        self._runners.append(runner)
        # A deep backlog: tests fire a thousand connections at once.
        site = web.TCPSite(runner, self.host, port, backlog=4096)
        await site.start()
        address = runner.addresses[0]
        host, bound = str(address[0]), int(address[1])
        return f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"

    async def close(self) -> None:
        """Stop serving, deliver pending callbacks and release every socket; idempotent.

        Delays of held requests and delayed callbacks are cut short: the requests are dropped,
        the callbacks sent at once.
        """
        if self._closing is not None:
            self._closing.set()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.wait([ticker])
        # Deliver callbacks while still serving: they may target the emulator itself.
        await self.drain_callbacks()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        await self.drain_callbacks()  # from requests that were still being handled
        session, self._http = self._http, None
        if session is not None:
            await session.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the official-style base URL (clients append /v1/...)."""
        if self._base_url is None:
            raise RuntimeError("the emulator has not been started")
        return self._base_url

    @property
    def gateway_url(self) -> str:
        """`base_url` + ``/kling``: the gateway-style base URL."""
        return self.base_url + _GATEWAY_PREFIX

    @property
    def media_url(self) -> str:
        """``http://127.0.0.1:<media_port>``: the media host that video URLs point at."""
        if self._media_url is None:
            raise RuntimeError("the emulator has not been started")
        return self._media_url

    # ------------------------------------------------------------------ test controls

    def count(self, route: str, *, method: str | None = None, family: str | None = None) -> int:
        """How many requests were received for `route` (optionally only with `method`, and
        only on `family`'s routes: ``video-extend``, ``text2video`` or ``image2video``)."""
        if route not in _ROUTES:
            raise ValueError(f"route must be one of {sorted(_ROUTES)}, got {route!r}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
        wanted = None if method is None else method.upper()
        return sum(
            1
            for r in self.requests
            if r.route == route
            and (wanted is None or r.method == wanted)
            and (family is None or r.family == family)
        )

    def inject(
        self,
        fault: Fault,
        *,
        route: str = "any",
        times: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Give the next `times` requests to `route` (or callbacks) this fault.

        `route` is ``create``, ``query``, ``list`` or ``any`` (any of those three), ``media``
        (video downloads) or ``callback`` (the ``Fault.callback_*`` kinds); unknown paths are
        never faulted. A fault kind that means nothing on the route raises ValueError.
        Injections queue up: a request or callback takes the oldest one that matches.

        With `seconds`, the fault is a burst: every matching request (or callback) for the
        next `seconds` on `clock` takes it, up to `times` of them if that is given too.
        Without it, `times` defaults to 1.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault, got {type(fault).__name__}")
        if route not in _INJECT_ROUTES:
            raise ValueError(f"route must be one of {sorted(_INJECT_ROUTES)}, got {route!r}")
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise ValueError(f"times must be an int >= 1, got {times!r}")
        until = None
        if seconds is not None:
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds)
                or seconds <= 0
            ):
                raise ValueError(f"seconds must be None or a finite number > 0, got {seconds!r}")
            until = self.clock() + seconds
        elif times is None:
            times = 1
        allowed = {"media": MEDIA_KINDS, "callback": CALLBACK_KINDS}.get(route, API_KINDS)
        if fault.kind not in allowed:
            raise ValueError(
                f"{fault!r} cannot be injected on route {route!r}; "
                f"kinds allowed there: {', '.join(sorted(allowed))}"
            )
        self._injections.append(_Injection(fault=fault, route=route, remaining=times, until=until))

    def set_status(self, task_id: str, status: str, *, message: str = "") -> None:
        """Set a task's status by hand (any string); the task then stops advancing by itself.

        ``succeed`` fills the result video; ``failed`` empties task_info/task_result and sets
        task_status_msg (to `message`, or a default). A callback is sent as for any change.
        """
        task = self._find(task_id)
        if task is None:
            raise KeyError(task_id)
        task.manual = True
        if status == "failed" and not message:
            message = "task failed"
        self._change(task, status, message)

    def fail_video(self, video_id: str, message: str = "content risk control") -> None:
        """Make tasks extending `video_id` end ``failed`` with `message` as task_status_msg."""
        self._failed_videos[video_id] = message

    def forget_video(self, video_id: str) -> None:
        """Make later creates for `video_id` answer HTTP 404 code 1203 ("does not exist")."""
        self._forgotten_videos.add(video_id)

    def expire_video(self, video_id: str) -> None:
        """Make later creates for `video_id` answer 404 code 1203 saying it expired (Kling
        deletes videos 30 days after they are made)."""
        self._expired_videos.add(video_id)

    def retire_model(self, video_id: str, model: str = "kling-v1") -> None:
        """Make later creates for `video_id` answer 404 code 1203 saying that `model`, which
        made it, was discontinued (Kling's answer for a retired model)."""
        self._retired_videos[video_id] = model

    def set_video_duration(self, video_id: str, seconds: float) -> None:
        """Give `video_id` a length: tasks extending it show it as their parent video's
        duration, and a create whose extension would pass 3 minutes is refused.

        The emulator also knows the lengths of the result videos it made: each extend adds
        `EXTEND_SECONDS` to the length of its source (a video it does not know counts as
        5.0 s), so an extend chain reaches the 3-minute limit as on Kling.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError("seconds must be a number")
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self._video_durations[video_id] = float(seconds)

    def media_content(self, video_id: str) -> bytes:
        """The bytes the media host serves for `video_id` (``/media/<video_id>.mp4``).

        Deterministic: the same id and `media_bytes` always give the same bytes.
        """
        return _media_content(video_id, self.media_bytes)

    async def drain_callbacks(self) -> None:
        """Wait until every callback scheduled so far has been attempted.

        Callbacks held by ``Fault.callback_reordered()`` are released first; delayed ones are
        waited for (or, while closing, sent at once).
        """
        while True:
            for task_id in list(self._held):
                self._release_held(task_id)
            if not self._callback_tasks:
                return
            await asyncio.wait(list(self._callback_tasks))

    # ------------------------------------------------------------------ request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, media_host=False)

    async def _handle_media_host(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, media_host=True)

    async def _serve(self, request: web.Request, *, media_host: bool) -> web.StreamResponse:
        raw_path, segments = _path_segments(request.raw_path)
        route, ident, under_v1, family = _classify(request.method, segments)
        if media_host and route != "media":  # the media host serves videos only
            route, ident, under_v1 = "other", None, False
        too_large = False
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body, too_large = b"", True
        parsed: Any = _NO_JSON
        if body:
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError):
                parsed = _NO_JSON
        fault = self._take_fault(route)
        index = len(self.requests)
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                raw_path=raw_path,
                route=route,
                headers=request.headers,
                json=None if parsed is _NO_JSON else parsed,
                fault=fault,
                status=None,
                query=dict(request.rel_url.query),
                family=family,
            )
        )
        if fault is not None and fault.kind == "drop":
            return self._drop(request)
        if fault is not None and not fault.processes_request and fault.kind != "delay":
            return self._send(index, _fault_reply(fault, media=route == "media"))
        if (
            fault is not None
            and fault.kind == "delay"
            and await self._sleep_unless_closing(fault.seconds or 0.0)
        ):
            return self._drop(request)
        waits: list[asyncio.Task[None]] = []
        self._reply_waits = waits
        try:
            if too_large:
                reply = _envelope(413, 1200, "request body too large")
            elif route == "media":
                assert ident is not None
                reply = self._media(request, ident, fault)
            elif media_host:
                reply = _Reply(status=404, body=b"Not Found", content_type="text/plain")
            else:
                reply = self._dispatch(route, ident, under_v1, request, parsed, family)
        finally:
            self._reply_waits = None
        if waits:  # Fault.callback_before_reply: the callback lands before the reply
            await asyncio.wait(waits)
        if fault is not None and fault.kind == "reply_lost":
            return self._drop(request)
        if fault is not None and fault.kind == "truncated":
            half = reply.body[: len(reply.body) // 2]
            if route == "media":  # a short file, served as if whole
                reply = attrs.evolve(reply, body=half)
            else:  # half a JSON body behind HTTP 200, as a broken gateway sends it
                reply = _Reply(status=200, body=half, headers=reply.headers)
        if fault is not None and fault.kind == "cut":
            return self._cut(request, index, reply, fault.after)
        if fault is not None and fault.kind == "chunked":
            return await self._send_chunked(request, index, reply)
        return self._send(index, reply)

    async def _sleep_unless_closing(self, seconds: float) -> bool:
        """Sleep `seconds`; True if the emulator started closing meanwhile."""
        closing = self._closing
        if closing is None:  # pragma: no cover - only reachable while serving
            await asyncio.sleep(seconds)
            return False
        if closing.is_set():
            return True
        try:
            await asyncio.wait_for(closing.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    def _record_status(self, index: int, status: int) -> None:
        self.requests[index] = attrs.evolve(self.requests[index], status=status)

    def _send(self, index: int, reply: _Reply) -> web.Response:
        self._record_status(index, reply.status)
        response = web.Response(status=reply.status, body=reply.body)
        response.content_type = reply.content_type
        # The server's clock, as `clock` reads it (a test may set it minutes off).
        response.headers["Date"] = email.utils.formatdate(self.clock(), usegmt=True)
        for name, value in reply.headers:
            response.headers[name] = value
        return response

    async def _send_chunked(
        self, request: web.Request, index: int, reply: _Reply
    ) -> web.StreamResponse:
        """Send `reply` with ``Transfer-Encoding: chunked`` and no ``Content-Length``."""
        self._record_status(index, reply.status)
        response = web.StreamResponse(status=reply.status)
        response.content_type = reply.content_type
        for name, value in reply.headers:
            response.headers[name] = value
        response.enable_chunked_encoding()
        await response.prepare(request)
        if request.method != "HEAD":
            for start in range(0, len(reply.body), _CHUNK):
                await response.write(reply.body[start : start + _CHUNK])
        await response.write_eof()
        return response

    def _cut(
        self, request: web.Request, index: int, reply: _Reply, after: int | None
    ) -> web.Response:
        """Announce the whole body, send part of it and close the connection."""
        body = b"" if request.method == "HEAD" else reply.body
        keep = len(body) // 2 if after is None else after
        keep = min(keep, max(len(body) - 1, 0))
        lines = [
            f"HTTP/1.1 {reply.status} {_reason(reply.status)}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers),
            "Connection: close",
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport = request.transport
        if transport is not None:
            transport.write(head + body[:keep])
        self._record_status(index, reply.status)
        return self._drop(request)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection (flushing what was written); aiohttp then stays quiet."""
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=500)

    def _take_fault(self, route: str) -> Fault | None:
        if route not in _API_ROUTES and route != "media":
            return None
        self._expire_injections()
        for injection in self._injections:
            if injection.route == route or (injection.route == "any" and route != "media"):
                return self._use(injection)
        return None

    def _use(self, injection: _Injection) -> Fault:
        if injection.remaining is not None:
            injection.remaining -= 1
            if injection.remaining <= 0:
                self._injections.remove(injection)
        return injection.fault

    def _expire_injections(self) -> None:
        """Drop the bursts whose time window has passed."""
        if any(i.until is not None for i in self._injections):
            now = self.clock()
            self._injections = [i for i in self._injections if i.until is None or now < i.until]

    def _dispatch(
        self,
        route: str,
        ident: str | None,
        under_v1: bool,
        request: web.Request,
        parsed: Any,
        family: str = EXTEND,
    ) -> _Reply:
        # A gateway that does not route the list answers before anything checks the key.
        if route == "list" and self.list_mode == "404":
            return _envelope(404, 1202, f"no route for {request.method} {request.path}")
        if route == "list" and self.list_mode == "html":
            return _Reply(status=200, body=_LIST_HTML_PAGE, content_type="text/html")
        if under_v1:  # Kling authenticates every /v1 path before routing it
            denied = check_authorization(
                request.headers.get("Authorization"),
                api_key=self.api_key,
                access_key=self.access_key,
                secret_key=self.secret_key,
                now=self.clock(),
            )
            if denied is not None:
                return _envelope(401, denied[0], denied[1])
        if route == "other":
            return _envelope(404, 1202, f"no route for {request.method} {request.path}")
        try:
            if route == "create":
                return self._create(parsed, family)
            if route == "query":
                assert ident is not None
                return self._query(ident, family)
            return self._list(request.rel_url.query, family)
        except _BadRequest as exc:
            return _envelope(exc.status, exc.code, exc.message)

    def _create(self, parsed: Any, family: str = EXTEND) -> _Reply:
        if parsed is _NO_JSON:
            raise _BadRequest(400, 1200, "request body must be valid JSON")
        if not isinstance(parsed, dict):
            raise _BadRequest(400, 1200, "request body must be a JSON object")
        if family != EXTEND:
            return self._create_source(parsed, family)
        video_id = parsed.get("video_id")
        if video_id is None or video_id == "":
            raise _BadRequest(400, 1201, "video_id is required")
        if not isinstance(video_id, str):
            raise _BadRequest(400, 1201, "video_id must be a string")
        prompt = _optional_text(parsed, "prompt")
        negative_prompt = _optional_text(parsed, "negative_prompt")
        cfg_scale = _validate_cfg_scale(parsed)
        callback_url = _validate_callback_url(parsed)
        watermark = _validate_watermark(parsed)
        parent_task_id = _optional_id(parsed, "task_id")
        if self.require_parent_task_id and parent_task_id is None:
            raise _BadRequest(400, 1201, "task_id is required (the parent task of video_id)")
        external_id = None
        if self.accept_external_task_id:
            external_id = _optional_id(parsed, "external_task_id")
        if video_id in self._forgotten_videos:
            raise _BadRequest(404, 1203, f"video {video_id} does not exist")
        parent_duration = self._check_source(video_id)
        self._check_room(external_id)
        task = self._new_task(
            parent_duration + EXTEND_SECONDS,
            video_id=video_id,
            external_task_id=external_id,
            parent_task_id=parent_task_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            callback_url=callback_url,
            watermark=watermark,
            parent_duration=f"{parent_duration:.1f}",
        )
        return self._start(task)

    def _new_task(self, seconds: float, **fields: Any) -> EmulatedTask:
        """A task created now with ``fields`` (what its create asked), making a video
        ``seconds`` long that later creates may extend."""
        now_ms = self._now_ms()
        task = EmulatedTask(
            task_id=self._new_id(),
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
            result_video_id=self._new_id(),
            media_base_url=self._media_url or "",
            index=len(self._order),
            unit_deduction=self.unit_deduction,
            result_duration=f"{seconds:.1f}",
            cash_deduction=self.cash_deduction,
            list_price=self.list_price,
            **fields,
        )
        self._video_durations[task.result_video_id] = round(seconds, 1)
        return task

    def _check_room(self, external_id: str | None) -> None:
        """Refuse a taken external id, and a create past the parallel-task limit (1303)."""
        if external_id is not None and (
            external_id in self._by_external_id or external_id in self.tasks
        ):
            raise _BadRequest(400, 1201, "external_task_id already exists")
        self._refresh_due()
        if self.max_running is not None and len(self._running) >= self.max_running:
            raise _BadRequest(429, 1303, _MESSAGES[1303])

    def _create_source(self, parsed: dict[str, Any], family: str) -> _Reply:
        """A text2video or image2video create: a task whose result is a source video of the
        asked duration (``"5"`` by default), which an extend then takes."""
        try:
            asked = read_source_create(family, parsed)
        except SourceRefusal as refusal:
            raise _BadRequest(400, 1201, refusal.message) from None
        callback_url = _validate_callback_url(parsed)
        watermark = _validate_watermark(parsed)
        external_id = None
        if self.accept_external_task_id:
            external_id = _optional_id(parsed, "external_task_id")
        self._check_room(external_id)
        task = self._new_task(
            asked.duration,
            video_id="",
            family=family,
            external_task_id=external_id,
            prompt=asked.prompt,
            negative_prompt=asked.negative_prompt,
            callback_url=callback_url,
            watermark=watermark,
        )
        return self._start(task)

    def _start(self, task: EmulatedTask) -> _Reply:
        """Hold a new task, call back on its creation, and answer the create."""
        external_id = task.external_task_id
        self._schedule_times(task)
        self.tasks[task.task_id] = task
        self._order.append(task.task_id)
        self._orders.setdefault(task.family, []).append(task.task_id)
        self._running.add(task.task_id)
        if external_id is not None:
            self._by_external_id[external_id] = task.task_id
        self._emit_callback(task)  # Kling calls back on creation (submitted) too
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": task.status,
            "created_at": task.created_at_ms,
            "updated_at": task.updated_at_ms,
        }
        if external_id is not None:
            data["task_info"] = {"external_task_id": external_id}
        return _success(data)

    def _check_source(self, video_id: str) -> float:
        """Refuse a source video as Kling does (expired, of a retired model, or too long to
        extend); return its length. Kling documents no wording for these refusals, nor a code
        for a video too long: 400 / 1201 (invalid parameter) is the emulator's guess."""
        if video_id in self._expired_videos:
            raise _BadRequest(
                404,
                1203,
                f"video {video_id} has expired: videos are deleted 30 days after they are made",
            )
        model = self._retired_videos.get(video_id)
        if model is not None:
            raise _BadRequest(
                404, 1203, f"video {video_id} was made by model {model}, which is discontinued"
            )
        duration = self._video_durations.get(video_id, float(PARENT_DURATION))
        if duration + EXTEND_SECONDS > MAX_EXTENDED_SECONDS:
            raise _BadRequest(
                400,
                1201,
                f"video {video_id} is too long to extend: its duration is {duration:.1f}s and "
                f"an extended video may not exceed {MAX_EXTENDED_SECONDS:g}s",
            )
        return duration

    def _query(self, ident: str, family: str = EXTEND) -> _Reply:
        task = self._find(ident)
        if task is None or task.family != family:  # each family queries its own tasks
            raise _BadRequest(404, 1203, f"task {ident} does not exist")
        self._observe(task)
        return _success(task.to_json())

    def _observe(self, task: EmulatedTask) -> None:
        """A client saw the task (a query, or a list page that holds it): advance it."""
        before = task.polls
        task.polls += 1
        if self.auto_advance and not task.manual:
            if task.timed:
                stage = self._time_stage(task)
            elif before >= self.polls_to_start + self.polls_to_finish:
                stage = 2
            elif before >= self.polls_to_start:
                stage = 1
            else:
                stage = 0
            self._advance(task, stage)

    def _list(self, query: Mapping[str, str], family: str = EXTEND) -> _Reply:
        page_num = _page_param(query, "pageNum", 1, 1000)
        page_size = _page_param(query, "pageSize", 30, 500)
        self._refresh_due()
        order = self._orders.get(family, [])  # each family lists its own tasks
        # Newest first without copying the whole list: index from the end.
        stop = len(order) - (page_num - 1) * page_size
        page: list[dict[str, Any]] = []
        for position in range(stop - 1, max(stop - page_size, 0) - 1, -1):
            task = self.tasks.get(order[position])
            if task is not None:
                self._observe(task)  # a list page is a look at each task on it
                page.append(task.to_json())
        return _success(page)

    # ------------------------------------------------------------------ media

    def _media(self, request: web.Request, name: str, fault: Fault | None) -> _Reply:
        """A video from the media host: whole, or the ``Range: bytes=...`` asked for."""
        video_id = name.removesuffix(".mp4")
        content = self.media_content(video_id)
        size = len(content)
        digest = hashlib.sha256(f"{video_id}/{size}".encode()).hexdigest()[:32]
        etag = f'"{digest}"'
        ranges = fault is None or fault.kind != "range_ignored"
        headers: list[tuple[str, str]] = [("ETag", etag)]
        if ranges:
            headers.append(("Accept-Ranges", "bytes"))
        wanted = request.headers.get("Range") if ranges else None
        if_range = request.headers.get("If-Range")
        if wanted is not None and (if_range is None or if_range == etag):
            span = _parse_range(wanted, size)
            if span is False:
                headers.append(("Content-Range", f"bytes */{size}"))
                return _Reply(
                    status=416, body=b"", content_type="text/plain", headers=tuple(headers)
                )
            if isinstance(span, tuple):
                first, last = span
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
                return _Reply(
                    status=206,
                    body=content[first : last + 1],
                    content_type="video/mp4",
                    headers=tuple(headers),
                )
        return _Reply(status=200, body=content, content_type="video/mp4", headers=tuple(headers))

    # ------------------------------------------------------------------ task progression

    def _find(self, ident: str) -> EmulatedTask | None:
        task = self.tasks.get(ident)
        if task is None and ident in self._by_external_id:
            task = self.tasks.get(self._by_external_id[ident])
        return task

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _new_id(self) -> str:
        while True:
            candidate = str(10**17 + secrets.randbelow(9 * 10**17))
            if candidate not in self.tasks and candidate not in self._by_external_id:
                return candidate

    def _schedule_times(self, task: EmulatedTask) -> None:
        """Fix a time-driven task's schedule at create (`task_seconds`, else `step_seconds`)."""
        if self.task_seconds is not None:
            try:
                waiting, working = _check_durations(self.task_seconds(task))
            except Exception as exc:
                raise _BadRequest(500, 5000, f"task_seconds failed: {exc!r}") from exc
        elif self.step_seconds is not None:
            waiting = working = self.step_seconds
        else:
            return
        created = task.created_at_ms / 1000
        task.timed = True
        task.starts_at = created + waiting
        task.finishes_at = task.starts_at + working
        heapq.heappush(self._deadlines, (task.starts_at, 1, task.index, task.task_id))
        heapq.heappush(self._deadlines, (task.finishes_at, 2, task.index, task.task_id))
        self._start_ticker()

    def _start_ticker(self) -> None:
        """Run the background ticker while there are deadlines and the emulator serves."""
        if self._ticker is None and self._closing is not None and not self._closing.is_set():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _time_stage(self, task: EmulatedTask) -> int:
        now = self.clock()
        if task.finishes_at is not None and now >= task.finishes_at:
            return 2
        return 1 if task.starts_at is not None and now >= task.starts_at else 0

    def _refresh_due(self) -> None:
        """Advance the time-driven tasks whose next deadline has passed; O(due), not O(n)."""
        if not self.auto_advance:
            return
        now = self.clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, stage, _, task_id = heapq.heappop(deadlines)
            task = self.tasks.get(task_id)
            if task is not None and not task.manual:
                self._advance(task, stage)

    def _advance(self, task: EmulatedTask, stage: int) -> None:
        """Move an automatic task up to `stage`, through each status on the way.

        Each change sends its callback; time-driven changes carry their scheduled time as
        updated_at.
        """
        current = _STAGES.get(task.status)
        if current is None or stage <= current:
            return
        if current < 1:
            self._change(task, "processing", "", at=task.starts_at)
        if stage < 2:
            return
        if task.video_id in self._failed_videos:
            self._change(task, "failed", self._failed_videos[task.video_id], at=task.finishes_at)
        else:
            self._change(task, "succeed", "", at=task.finishes_at)

    def _change(
        self, task: EmulatedTask, status: str, message: str, at: float | None = None
    ) -> None:
        task.status = status
        task.status_message = message
        now_ms = self._now_ms() if at is None else round(at * 1000)
        task.updated_at_ms = max(now_ms, task.created_at_ms)
        if status in _RUNNING:
            self._running.add(task.task_id)
        else:
            self._running.discard(task.task_id)
        if status in _FINAL and not task.timed:
            task.finishes_at = self.clock()
        self._emit_callback(task)

    async def _tick(self) -> None:
        """Advance time-driven tasks in the background, so callbacks come without polling."""
        while True:
            delay = _TICK_MAX
            if self._deadlines:
                delay = min(max(self._deadlines[0][0] - self.clock(), _TICK_MIN), _TICK_MAX)
            await asyncio.sleep(delay)
            self._refresh_due()

    # ------------------------------------------------------------------ callbacks

    def _emit_callback(self, task: EmulatedTask) -> None:
        """POST the task object, as the query would answer it now, to its callback_url."""
        if not task.callback_url:
            return
        callback = _Callback(
            task_id=task.task_id,
            url=task.callback_url,
            body=task.to_json(),
            fault=self._take_callback_fault(in_request=self._reply_waits is not None),
        )
        kind = None if callback.fault is None else callback.fault.kind
        if self._http is None:  # not serving (closed): nothing to send with, note the attempt
            self._record_callback(callback, None, "the emulator is not running")
            return
        if kind == "callback_lost":
            self._record_callback(callback, None, "lost")
            return
        if kind == "callback_reordered":
            self._held.setdefault(task.task_id, []).append(callback)
            return
        job = self._schedule(callback, chained=kind != "callback_delayed")
        if kind == "callback_before_reply" and self._reply_waits is not None:
            self._reply_waits.append(job)
        self._release_held(task.task_id)

    def _take_callback_fault(self, *, in_request: bool) -> Fault | None:
        self._expire_injections()
        for injection in self._injections:
            if injection.route != "callback":
                continue
            if injection.fault.kind == "callback_before_reply" and not in_request:
                continue
            return self._use(injection)
        return None

    def _release_held(self, task_id: str) -> None:
        for callback in self._held.pop(task_id, []):
            if self._http is None:
                self._record_callback(callback, None, "the emulator is not running")
            else:
                self._schedule(callback, chained=True)

    def _schedule(self, callback: _Callback, *, chained: bool) -> asyncio.Task[None]:
        """Start delivering `callback`; a chained one waits for the task's previous ones."""
        previous = self._callback_chain.get(callback.task_id) if chained else None
        job = asyncio.get_running_loop().create_task(self._deliver(callback, previous))
        self._callback_tasks.add(job)
        if chained:
            self._callback_chain[callback.task_id] = job
        job.add_done_callback(functools.partial(self._callback_done, callback.task_id))
        return job

    def _callback_done(self, task_id: str, job: asyncio.Task[None]) -> None:
        self._callback_tasks.discard(job)
        if self._callback_chain.get(task_id) is job:
            del self._callback_chain[task_id]
        if not job.cancelled():
            job.exception()  # mark retrieved; _deliver records its own errors

    async def _deliver(self, callback: _Callback, previous: asyncio.Task[None] | None) -> None:
        """POST one callback (twice if duplicated), after `previous` and any injected delay."""
        if previous is not None:
            await asyncio.wait([previous])
        fault = callback.fault
        if fault is not None and fault.kind == "callback_delayed":
            await self._sleep_unless_closing(fault.seconds or 0.0)
        copies = 2 if fault is not None and fault.kind == "callback_duplicated" else 1
        for _ in range(copies):
            status, error = await self._post(callback)
            self._record_callback(callback, status, error)

    async def _post(self, callback: _Callback) -> tuple[int | None, str | None]:
        """Send the bare task object as Kling does: signed at the time of sending when the
        emulator has a webhook secret (or a signature fault), else unsigned.

        Returns the receiver's HTTP status, or None and why there was none.
        """
        session = self._http
        if session is None or session.closed:
            return None, "the emulator is not running"
        data = _json_bytes(callback.body)
        headers = {"Content-Type": "application/json"}
        headers.update(
            signature_headers(
                self._webhook_keys, callback.webhook_id, self.clock(), data, callback.fault
            )
        )
        try:
            async with session.post(callback.url, data=data, headers=headers) as response:
                await response.read()
                return response.status, None
        except Exception as exc:  # any failure is the receiver's problem: note it, go on
            return None, f"{type(exc).__name__}: {exc}"

    def _record_callback(self, callback: _Callback, status: int | None, error: str | None) -> None:
        self.callbacks.append(
            RecordedCallback(
                url=callback.url,
                body=callback.body,
                fault=callback.fault,
                status=status,
                error=error,
            )
        )
