"""A Kling video-extend server on loopback, with fault injection, for tests.

`KlingEmulator` runs a real `aiohttp.web` server that answers like Kling (official paths and
the gateway's ``/kling`` prefix), keeps every request and task for inspection, moves tasks
through their statuses (by polls, by time, or by hand) and POSTs callbacks. It shares no code
with the SDK on purpose: it is an independent peer to test the SDK against.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp import web

from kling_async.testing._auth import check_authorization
from kling_async.testing._fault import Fault
from kling_async.testing._records import EmulatedTask, RecordedRequest

__all__ = ["KlingEmulator"]

_BASE_PATH: Final = "/v1/videos/video-extend"
_GATEWAY_PREFIX: Final = "/kling"
_ROUTES: Final = frozenset({"create", "query", "list", "media", "other"})
_INJECT_ROUTES: Final = frozenset({"create", "query", "list", "any"})
_API_ROUTES: Final = frozenset({"create", "query", "list"})
_LIST_MODES: Final = frozenset({"ok", "404", "html"})
_RUNNING: Final = frozenset({"submitted", "processing"})
# Progress of an automatically advanced task: 0 submitted, 1 processing, 2 finished.
_STAGES: Final = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}
_MAX_TEXT: Final = 2500
_CALLBACK_TIMEOUT: Final = 10.0
_SHUTDOWN_TIMEOUT: Final = 2.0
_MEDIA_BYTES: Final = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 40
_NO_JSON: Final = object()

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
    remaining: int


class _BadRequest(Exception):
    """A create body that fails validation; carries the HTTP status, code and message."""

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
    data: Any = None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
) -> _Reply:
    body = {
        "code": code,
        "message": _MESSAGES.get(code, "Error") if message is None else message,
        "request_id": _new_request_id(),
        "data": data,
    }
    return _Reply(status=status, body=_json_bytes(body), headers=headers)


def _success(data: Any) -> _Reply:
    return _envelope(200, 0, "SUCCEED", data)


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


def _fault_reply(fault: Fault) -> _Reply:
    """The reply a non-processing fault sends instead of handling the request."""
    status = fault.status if fault.status is not None else 500
    if fault.kind in ("http", "business"):
        code = fault.code if isinstance(fault.code, int) else 5000
        headers: tuple[tuple[str, str], ...] = ()
        if fault.retry_after is not None:
            headers = (("Retry-After", str(fault.retry_after)),)
        return _envelope(status, code, fault.message, headers=headers)
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


def _classify(method: str, path: str) -> tuple[str, str | None]:
    """Map a request to its route name and the task id or media name in the path."""
    if path == _GATEWAY_PREFIX or path.startswith(_GATEWAY_PREFIX + "/"):
        path = path[len(_GATEWAY_PREFIX) :]
    if path == _BASE_PATH:
        if method == "POST":
            return "create", None
        if method == "GET":
            return "list", None
        return "other", None
    if path.startswith(_BASE_PATH + "/"):
        ident = path[len(_BASE_PATH) + 1 :]
        if ident and "/" not in ident and method == "GET":
            return "query", ident
        return "other", None
    if path.startswith("/media/"):
        name = path[len("/media/") :]
        if name and "/" not in name and method in ("GET", "HEAD"):
            return "media", name
    return "other", None


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


class KlingEmulator:
    """A Kling video-extend API on loopback, for tests of clients such as this SDK.

    Use it as ``async with KlingEmulator() as emu:`` and point a client at `base_url`
    (official style) or `gateway_url` (``/kling`` prefix). Both a gateway API key
    (``Bearer <api_key>``) and an official HS256 JWT (``iss`` = `access_key`, signed with
    `secret_key`) are accepted.

    Tasks advance when a client looks at them (a query, or a list page that holds them):
    `polls_to_start` looks show ``submitted``, the next
    `polls_to_finish` queries show ``processing``, later ones the final status (``succeed``, or
    ``failed`` for videos passed to `fail_video`). With `step_seconds` they advance by time
    instead (measured with `clock`). `auto_advance=False` leaves them to `set_status`.

    `inject` queues faults for the next matching requests; `requests`, `tasks`, `count` and
    `callbacks` let a test check what the client really did.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "test-key",
        access_key: str = "test-access-key",
        secret_key: str = "test-secret-key",
        polls_to_start: int = 1,
        polls_to_finish: int = 1,
        step_seconds: float | None = None,
        auto_advance: bool = True,
        max_running: int | None = None,
        list_mode: str = "ok",
        require_parent_task_id: bool = False,
        accept_external_task_id: bool = True,
    ) -> None:
        if polls_to_start < 0 or polls_to_finish < 0:
            raise ValueError("polls_to_start and polls_to_finish must be >= 0")
        if step_seconds is not None and (not math.isfinite(step_seconds) or step_seconds < 0):
            raise ValueError("step_seconds must be None or a finite number >= 0")
        if max_running is not None and max_running < 0:
            raise ValueError("max_running must be None or >= 0")
        if list_mode not in _LIST_MODES:
            raise ValueError(f"list_mode must be one of {sorted(_LIST_MODES)}, got {list_mode!r}")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.access_key = access_key
        self.secret_key = secret_key
        self.polls_to_start = polls_to_start
        self.polls_to_finish = polls_to_finish
        self.step_seconds = step_seconds
        self.auto_advance = auto_advance
        self.max_running = max_running
        self.list_mode = list_mode
        self.require_parent_task_id = require_parent_task_id
        self.accept_external_task_id = accept_external_task_id
        self.clock: Callable[[], float] = time.time
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, EmulatedTask] = {}
        self.callbacks: list[tuple[str, dict[str, Any]]] = []
        self._by_external_id: dict[str, str] = {}
        self._failed_videos: dict[str, str] = {}
        self._forgotten_videos: set[str] = set()
        self._injections: list[_Injection] = []
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._callback_chain: dict[str, asyncio.Task[None]] = {}

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
        """Start serving on `host`/`port` (port 0 picks a free one, see `base_url`)."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT, handler_cancellation=False
        )
        await runner.setup()
        try:
            # A deep backlog: tests fire a thousand connections at once.
            site = web.TCPSite(runner, self.host, self.port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        address = runner.addresses[0]
        host, port = str(address[0]), int(address[1])
        self.port = port
        self._base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._runner = runner
        self._closing = asyncio.Event()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_CALLBACK_TIMEOUT))
        for task in self.tasks.values():
            task.media_base_url = self._base_url
        if self.step_seconds is not None and self.auto_advance:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(self.step_seconds))

    async def close(self) -> None:
        """Stop serving, deliver pending callbacks and release every socket; idempotent."""
        if self._closing is not None:
            self._closing.set()  # wakes requests held by Fault.delay: they are dropped
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.wait([ticker])
        # Deliver callbacks while still serving: they may target the emulator itself.
        await self.drain_callbacks()
        runner, self._runner = self._runner, None
        if runner is not None:
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

    # ------------------------------------------------------------------ test controls

    def count(self, route: str, *, method: str | None = None) -> int:
        """How many requests were received for `route` (optionally only with `method`)."""
        if route not in _ROUTES:
            raise ValueError(f"route must be one of {sorted(_ROUTES)}, got {route!r}")
        wanted = None if method is None else method.upper()
        return sum(
            1 for r in self.requests if r.route == route and (wanted is None or r.method == wanted)
        )

    def inject(self, fault: Fault, *, route: str = "any", times: int = 1) -> None:
        """Give the next `times` requests to `route` this fault.

        `route` is ``create``, ``query``, ``list`` or ``any`` (any of those three; media and
        unknown paths are never faulted). Injections queue up: a request takes the oldest one
        that matches its route.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault, got {type(fault).__name__}")
        if route not in _INJECT_ROUTES:
            raise ValueError(f"route must be one of {sorted(_INJECT_ROUTES)}, got {route!r}")
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times!r}")
        self._injections.append(_Injection(fault=fault, route=route, remaining=times))

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
        """Make later creates for `video_id` answer HTTP 404 code 1203 (video expired)."""
        self._forgotten_videos.add(video_id)

    async def drain_callbacks(self) -> None:
        """Wait until every callback scheduled so far has been attempted."""
        while self._callback_tasks:
            await asyncio.wait(list(self._callback_tasks))

    # ------------------------------------------------------------------ request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route, ident = _classify(request.method, request.path)
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
                route=route,
                headers=request.headers,
                json=None if parsed is _NO_JSON else parsed,
                fault=fault,
                status=None,
                query=dict(request.rel_url.query),
            )
        )
        if fault is not None and fault.kind == "drop":
            return self._drop(request)
        if fault is not None and not fault.processes_request and fault.kind != "delay":
            return self._send(index, _fault_reply(fault))
        if (
            fault is not None
            and fault.kind == "delay"
            and await self._sleep_unless_closing(fault.seconds or 0.0)
        ):
            return self._drop(request)
        if too_large:
            reply = _envelope(413, 1200, "request body too large")
        else:
            reply = self._dispatch(route, ident, request, parsed)
        if fault is not None and fault.kind == "reply_lost":
            return self._drop(request)
        if fault is not None and fault.kind == "truncated":
            reply = _Reply(
                status=200, body=reply.body[: len(reply.body) // 2], headers=reply.headers
            )
        return self._send(index, reply)

    async def _sleep_unless_closing(self, seconds: float) -> bool:
        """Sleep `seconds`; True if the emulator started closing meanwhile."""
        closing = self._closing
        if closing is None:  # pragma: no cover - only reachable while serving
            await asyncio.sleep(seconds)
            return False
        try:
            await asyncio.wait_for(closing.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    def _send(self, index: int, reply: _Reply) -> web.Response:
        self.requests[index] = attrs.evolve(self.requests[index], status=reply.status)
        response = web.Response(status=reply.status, body=reply.body)
        response.content_type = reply.content_type
        for name, value in reply.headers:
            response.headers[name] = value
        return response

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection without a reply; aiohttp then fails to write and stays quiet."""
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=500)

    def _take_fault(self, route: str) -> Fault | None:
        if route not in _API_ROUTES:
            return None
        for injection in self._injections:
            if injection.route in ("any", route):
                injection.remaining -= 1
                if injection.remaining <= 0:
                    self._injections.remove(injection)
                return injection.fault
        return None

    def _dispatch(self, route: str, ident: str | None, request: web.Request, parsed: Any) -> _Reply:
        if route == "media":
            return _Reply(status=200, body=_MEDIA_BYTES, content_type="video/mp4")
        if route == "other":
            return _envelope(404, 1202, f"no route for {request.method} {request.path}")
        if route == "list" and self.list_mode == "404":
            return _envelope(404, 1202, f"no route for {request.method} {request.path}")
        if route == "list" and self.list_mode == "html":
            return _Reply(status=200, body=_LIST_HTML_PAGE, content_type="text/html")
        denied = check_authorization(
            request.headers.get("Authorization"),
            api_key=self.api_key,
            access_key=self.access_key,
            secret_key=self.secret_key,
            now=self.clock(),
        )
        if denied is not None:
            return _envelope(401, denied[0], denied[1])
        try:
            if route == "create":
                return self._create(parsed)
            if route == "query":
                assert ident is not None
                return self._query(ident)
            return self._list(request.rel_url.query)
        except _BadRequest as exc:
            return _envelope(exc.status, exc.code, exc.message)

    def _create(self, parsed: Any) -> _Reply:
        if parsed is _NO_JSON:
            raise _BadRequest(400, 1200, "request body must be valid JSON")
        if not isinstance(parsed, dict):
            raise _BadRequest(400, 1200, "request body must be a JSON object")
        video_id = parsed.get("video_id")
        if video_id is None or video_id == "":
            raise _BadRequest(400, 1201, "video_id is required")
        if not isinstance(video_id, str):
            raise _BadRequest(400, 1201, "video_id must be a string")
        prompt = _optional_text(parsed, "prompt")
        negative_prompt = _optional_text(parsed, "negative_prompt")
        cfg_scale = _validate_cfg_scale(parsed)
        callback_url = _validate_callback_url(parsed)
        parent_task_id = _optional_id(parsed, "task_id")
        if self.require_parent_task_id and parent_task_id is None:
            raise _BadRequest(400, 1201, "task_id is required (the parent task of video_id)")
        external_id = None
        if self.accept_external_task_id:
            external_id = _optional_id(parsed, "external_task_id")
        if video_id in self._forgotten_videos:
            raise _BadRequest(404, 1203, f"video {video_id} does not exist")
        if external_id is not None and (
            external_id in self._by_external_id or external_id in self.tasks
        ):
            raise _BadRequest(400, 1201, "external_task_id already exists")
        if self.max_running is not None:
            self._refresh_by_time()
            running = sum(1 for t in self.tasks.values() if t.status in _RUNNING)
            if running >= self.max_running:
                raise _BadRequest(429, 1303, _MESSAGES[1303])
        now_ms = self._now_ms()
        task = EmulatedTask(
            task_id=self._new_id(),
            video_id=video_id,
            external_task_id=external_id,
            parent_task_id=parent_task_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            callback_url=callback_url,
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
            result_video_id=self._new_id(),
            media_base_url=self._base_url or "",
        )
        self.tasks[task.task_id] = task
        if external_id is not None:
            self._by_external_id[external_id] = task.task_id
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": task.status,
            "created_at": task.created_at_ms,
            "updated_at": task.updated_at_ms,
        }
        if external_id is not None:
            data["task_info"] = {"external_task_id": external_id}
        return _success(data)

    def _query(self, ident: str) -> _Reply:
        task = self._find(ident)
        if task is None:
            raise _BadRequest(404, 1203, f"task {ident} does not exist")
        self._observe(task)
        return _success(task.to_json())

    def _observe(self, task: EmulatedTask) -> None:
        """A client saw the task (a query, or a list page that holds it): advance it."""
        before = task.polls
        task.polls += 1
        if self.auto_advance and not task.manual:
            if self.step_seconds is not None:
                stage = self._time_stage(task)
            elif before >= self.polls_to_start + self.polls_to_finish:
                stage = 2
            elif before >= self.polls_to_start:
                stage = 1
            else:
                stage = 0
            self._advance(task, stage)

    def _list(self, query: Mapping[str, str]) -> _Reply:
        page_num = _page_param(query, "pageNum", 1, 1000)
        page_size = _page_param(query, "pageSize", 30, 500)
        newest_first = list(reversed(self.tasks.values()))
        start = (page_num - 1) * page_size
        page = newest_first[start : start + page_size]
        for task in page:
            self._observe(task)
        return _success([t.to_json() for t in page])

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

    def _time_stage(self, task: EmulatedTask) -> int:
        assert self.step_seconds is not None
        elapsed = self.clock() - task.created_at_ms / 1000
        if elapsed >= 2 * self.step_seconds:
            return 2
        return 1 if elapsed >= self.step_seconds else 0

    def _refresh_by_time(self) -> None:
        if self.step_seconds is None or not self.auto_advance:
            return
        for task in list(self.tasks.values()):
            if not task.manual:
                self._advance(task, self._time_stage(task))

    def _advance(self, task: EmulatedTask, stage: int) -> None:
        current = _STAGES.get(task.status)
        if current is None or stage <= current:
            return
        if stage == 1:
            self._change(task, "processing", "")
        elif task.video_id in self._failed_videos:
            self._change(task, "failed", self._failed_videos[task.video_id])
        else:
            self._change(task, "succeed", "")

    def _change(self, task: EmulatedTask, status: str, message: str) -> None:
        task.status = status
        task.status_message = message
        task.updated_at_ms = max(self._now_ms(), task.created_at_ms)
        if task.callback_url:
            self._schedule_callback(task.task_id, task.callback_url, task.to_json())

    async def _tick(self, step_seconds: float) -> None:
        """Advance time-driven tasks in the background, so callbacks come without polling."""
        interval = min(max(step_seconds / 4, 0.01), 0.05)
        while True:
            await asyncio.sleep(interval)
            self._refresh_by_time()

    # ------------------------------------------------------------------ callbacks

    def _schedule_callback(self, task_id: str, url: str, body: dict[str, Any]) -> None:
        if self._http is None:  # not serving (closed): nothing to send with, note the attempt
            self.callbacks.append((url, body))
            return
        previous = self._callback_chain.get(task_id)
        job = asyncio.get_running_loop().create_task(self._deliver(url, body, previous))
        self._callback_tasks.add(job)
        self._callback_chain[task_id] = job
        job.add_done_callback(lambda done: self._callback_done(task_id, done))

    def _callback_done(self, task_id: str, job: asyncio.Task[None]) -> None:
        self._callback_tasks.discard(job)
        if self._callback_chain.get(task_id) is job:
            del self._callback_chain[task_id]
        if not job.cancelled():
            job.exception()  # mark retrieved; _deliver swallows its own errors anyway

    async def _deliver(
        self, url: str, body: dict[str, Any], previous: asyncio.Task[None] | None
    ) -> None:
        """POST one callback after the previous one for the same task (keeps their order)."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            session = self._http
            if session is not None and not session.closed:
                with contextlib.suppress(Exception):
                    async with session.post(url, json=body) as response:
                        await response.read()
        finally:
            self.callbacks.append((url, body))
