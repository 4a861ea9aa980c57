"""The Kling protocol without I/O: build requests, read replies, choose the exception.

Values in, values out (the gidgethub way): no aiohttp, no clock, no sleeping. The session
sends what `create_request()` and friends build and hands the reply to a ``parse_*``
function, which returns models or raises the right `KlingError`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

from ._converter import Envelope, converter, load_json
from ._policies import parse_retry_after
from ._source_requests import ImageToVideo, TextToVideo
from ._source_video import source_video_error
from .errors import (
    AccountError,
    APIError,
    AuthenticationError,
    ContentPolicyError,
    InvalidRequestError,
    ListUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExhaustedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    TaskLimitError,
)
from .models import ExtendRequest, Task, TaskFamily

__all__ = [
    "HTTPRequest",
    "HTTPResponse",
    "create_request",
    "error_class_for",
    "family_path",
    "list_request",
    "parse_created",
    "parse_task",
    "parse_task_list",
    "query_request",
    "request_id_of",
]

EXTEND_PATH = "/v1/videos/video-extend"  # appended to the base URL, which ends before /v1
# Each task family's create, query and list routes share one path (docs/concepts.md, "Task
# families"); a gateway's base URL carries its prefix (``/kling``).
_PATHS = {family: f"/v1/videos/{family.value}" for family in TaskFamily}
# The converter's hooks, looked up once: a reply is decoded without per-call dispatch.
_TASK_HOOK = converter.get_structure_hook(Task)
_ENVELOPE_HOOK = converter.get_structure_hook(Envelope)
_REQUEST_HOOKS = {
    cls: converter.get_unstructure_hook(cls) for cls in (ExtendRequest, TextToVideo, ImageToVideo)
}
_JSON_HEADERS = (("Accept", "application/json"),)
# Create bodies as compact JSON; one encoder, as json.dumps with options makes one per call.
_BODY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_BODY_HEADERS = (("Accept", "application/json"), ("Content-Type", "application/json"))


@attrs.frozen
class HTTPRequest:
    """One request to send; it carries no credentials (the session adds ``Authorization``)."""

    method: str
    url: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None = None


@attrs.frozen
class HTTPResponse:
    """What came back: the status, the headers and the whole body.

    Headers are read only where the protocol needs them (error replies), so a successful
    reply costs no header lookups.
    """

    status: int
    body: bytes
    headers: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` header, or empty."""
        return self.header("Content-Type") or ""

    @property
    def retry_after(self) -> str | None:
        """The ``Retry-After`` header, if any."""
        return self.header("Retry-After")

    def header(self, name: str) -> str | None:
        """A header by name, ignoring case (HTTP/2 and some servers send lower case)."""
        value = self.headers.get(name)
        if value is not None:
            return value
        folded = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == folded), None)


def family_path(family: TaskFamily) -> str:
    """The route of ``family``'s creates, queries and lists, below the base URL."""
    return _PATHS[family]


def create_request(
    base_url: str, request: ExtendRequest | TextToVideo | ImageToVideo
) -> HTTPRequest:
    """``POST /v1/videos/<family>`` with the request as compact JSON (unset fields left out)."""
    body = _BODY_ENCODER.encode(_REQUEST_HOOKS[type(request)](request))
    path = _PATHS[request.family]
    return HTTPRequest("POST", base_url + path, path, _JSON_BODY_HEADERS, body.encode())


def query_request(
    base_url: str, task_id: str, family: TaskFamily = TaskFamily.EXTEND
) -> HTTPRequest:
    """``GET /v1/videos/<family>/{id}``: the id may be a task id or an external task id.

    Ids are opaque: what is not unreserved is percent-encoded, and so is an id of dots, so
    that ``..`` or ``a/b`` reach the server as one literal path segment, never another
    endpoint. The URL is sent exactly as built (the transport does not requote).
    """
    if not (task_id.isascii() and task_id.isalnum()):
        task_id = _quote_segment(task_id)
    path = f"{_PATHS[family]}/{task_id}"
    return HTTPRequest("GET", base_url + path, path, _JSON_HEADERS)


def _quote_segment(text: str) -> str:
    quoted = urllib.parse.quote(text, safe="")  # UTF-8; "/" too
    if quoted in (".", ".."):  # a dot segment would be resolved away by any URL library
        quoted = quoted.replace(".", "%2E")
    return quoted


def list_request(
    base_url: str, page: int, page_size: int, family: TaskFamily = TaskFamily.EXTEND
) -> HTTPRequest:
    """``GET /v1/videos/<family>?pageNum=&pageSize=``: page 1 holds the newest tasks."""
    path = f"{_PATHS[family]}?pageNum={page}&pageSize={page_size}"
    return HTTPRequest("GET", base_url + path, path, _JSON_HEADERS)


def parse_created(response: HTTPResponse, now: dt.datetime, *, video_id: str | None = None) -> Task:
    """Read a create reply: ``data`` holds the new task (id, status, times).

    A reply that names the task but leaves out its status still made it: a new task is
    ``submitted`` (the server may leave out any field; docs/concepts.md, "Task handles").
    A refusal because of the source video ``video_id`` (retired model, expired, too long)
    raises a `SourceVideoError` (docs/errors.md, "Refused source videos").
    """
    data, request_id, status = _data(response, now, task_id=None, video_id=video_id)
    if isinstance(data, dict) and data.get("task_status") is None:
        data = {**data, "task_status": "submitted"}
    return _structure_task(data, request_id, status)


def parse_task(response: HTTPResponse, now: dt.datetime, *, task_id: str | None = None) -> Task:
    """Read a query reply: ``data`` is the full task object."""
    return _structure_task(*_data(response, now, task_id=task_id))


def parse_task_list(response: HTTPResponse, now: dt.datetime) -> list[Task]:
    """Read a list reply (``data`` is an array of tasks, newest first).

    A 404, Kling's "invalid method" (1202) or an HTML page with status 200 means the base URL
    does not offer listing: most gateways do not route it (docs/concepts.md, "Listing tasks").
    """
    if 200 <= response.status < 300 and _looks_like_html(response):
        raise ListUnavailableError(
            "this base URL does not offer the list endpoint (it answered an HTML page)"
        )
    try:
        data, request_id, _ = _data(response, now, task_id=None)
    except (NotFoundError, InvalidRequestError) as error:
        if isinstance(error, NotFoundError) or error.code == 1202:
            raise ListUnavailableError(
                f"this base URL does not offer the list endpoint: {error}"
            ) from error
        raise
    if not isinstance(data, list):
        raise ResponseDecodeError(
            f"a task list was expected, got {type(data).__name__}",
            status=response.status,
            is_json=True,
            request_id=request_id,
        )
    return [_structure_task(item, request_id, response.status) for item in data]


def request_id_of(response: HTTPResponse) -> str | None:
    """The envelope's ``request_id`` (for logs), or None when the body has none."""
    try:
        document = json.loads(response.body.decode())
    except (ValueError, RecursionError):
        return None
    request_id = document.get("request_id") if isinstance(document, dict) else None
    return request_id if isinstance(request_id, str) else None


def _structure_task(data: Any, request_id: str | None, status: int) -> Task:
    if not isinstance(data, dict):
        raise ResponseDecodeError(
            f"a task object was expected, got {type(data).__name__}",
            status=status,
            is_json=True,
            request_id=request_id,
        )
    try:
        return _TASK_HOOK(data, Task)  # type: ignore[no-any-return]
    except cattrs.BaseValidationError as exc:
        detail = "; ".join(cattrs.transform_error(exc, path="data"))
        raise ResponseDecodeError(
            f"the task in the reply has the wrong shape: {detail}",
            status=status,
            is_json=True,
            request_id=request_id,
        ) from exc
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        raise ResponseDecodeError(
            f"the task in the reply has the wrong shape: {exc}",
            status=status,
            is_json=True,
            request_id=request_id,
        ) from exc


def _data(
    response: HTTPResponse, now: dt.datetime, *, task_id: str | None, video_id: str | None = None
) -> tuple[Any, str | None, int]:
    """Unwrap the envelope: return (data, request_id, status) or raise the matching error."""
    status = response.status
    try:
        # RFC 8259: JSON on the wire is UTF-8; fractions read as exact decimals (costs)
        document = load_json(response.body.decode())
    except (ValueError, RecursionError) as exc:
        if status >= 400:
            raise _http_error(response, now, task_id=task_id) from exc
        raise ResponseDecodeError(
            f"the reply is not JSON ({_describe(response)})",
            status=status,
            is_json=False,
            excerpt=_excerpt(response.body),
        ) from exc
    if (
        type(document) is dict
        and 200 <= status < 300
        and type(document.get("code")) is int
        and document["code"] == 0
    ):  # the common success reply, read without building an Envelope
        request_id = document.get("request_id")
        return document.get("data"), request_id if type(request_id) is str else None, status
    if not isinstance(document, dict):
        if status >= 400:
            raise _http_error(response, now, task_id=task_id)
        raise ResponseDecodeError(
            f"the reply is JSON but not an envelope object: {type(document).__name__}",
            status=status,
            is_json=True,
            excerpt=_excerpt(response.body),
        )
    try:
        envelope: Envelope = _ENVELOPE_HOOK(document, Envelope)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        if status >= 400:  # the status already says what went wrong
            raise _http_error(response, now, task_id=task_id) from exc
        raise ResponseDecodeError(
            "the reply envelope has the wrong shape",
            status=status,
            is_json=True,
            excerpt=_excerpt(response.body),
        ) from exc
    code = _int_code(envelope.code)
    if code == 0 and 200 <= status < 300:
        return envelope.data, envelope.request_id, status
    if envelope.code is None and status < 400:
        raise ResponseDecodeError(
            "the reply has no business code",
            status=status,
            is_json=True,
            excerpt=_excerpt(response.body),
            request_id=envelope.request_id,
        )
    raise _envelope_error(response, envelope, code, now, task_id=task_id, video_id=video_id)


def _int_code(code: object) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and _INTEGER.fullmatch(code.strip()):
        return int(code)
    return None


_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")  # business codes are small; int() caps long strings


def _envelope_error(
    response: HTTPResponse,
    envelope: Envelope,
    code: int | None,
    now: dt.datetime,
    *,
    task_id: str | None,
    video_id: str | None = None,
) -> APIError:
    message, request_id = envelope.message, envelope.request_id
    gateway_code = None
    if code is None and envelope.code is not None:
        # A new-api style gateway: a string code, Kling's own reply sometimes kept as JSON
        # text inside the message (docs/errors.md, "Which Kling code raises which class").
        gateway_code = str(envelope.code)
        embedded = _embedded_kling_error(message)
        if embedded is not None:
            code, message, request_id = embedded[0], embedded[1], embedded[2] or request_id
    cls = error_class_for(response.status, code)
    message = message or _MEANINGS.get(code or 0, "the request failed")
    retry_after = parse_retry_after(response.retry_after, now)
    if video_id is not None:  # a create's refusal: is it about its source video?
        source = source_video_error(
            cls,
            message,
            video_id=video_id,
            status=response.status,
            code=code,
            request_id=request_id,
            gateway_code=gateway_code,
            retry_after=retry_after,
        )
        if source is not None:
            return source
    return cls(
        message,
        status=response.status,
        code=code,
        request_id=request_id,
        task_id=task_id,
        gateway_code=gateway_code,
        retry_after=retry_after,
    )


def _embedded_kling_error(message: str) -> tuple[int, str, str | None] | None:
    # From the first "{" to the last "}": found in linear time (a regex like \{.*\} would
    # take quadratic time on a message full of braces, and a message may be megabytes).
    start, end = message.find("{"), message.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        inner = json.loads(message[start : end + 1])
    except (ValueError, RecursionError):
        return None
    if not isinstance(inner, dict):
        return None
    code = _int_code(inner.get("code"))
    if code is None:
        return None
    inner_message = inner.get("message")
    inner_request_id = inner.get("request_id")
    return (
        code,
        inner_message if isinstance(inner_message, str) else message,
        inner_request_id if isinstance(inner_request_id, str) else None,
    )


def _http_error(response: HTTPResponse, now: dt.datetime, *, task_id: str | None) -> APIError:
    """An error status whose body is not a Kling envelope (a proxy's HTML page, say)."""
    cls = error_class_for(response.status, None)
    return cls(
        f"HTTP {response.status} without a Kling reply ({_describe(response)})",
        status=response.status,
        task_id=task_id,
        retry_after=parse_retry_after(response.retry_after, now),
    )


def error_class_for(status: int, code: int | None) -> type[APIError]:
    """Pick the exception class: the business code decides, the HTTP status is the fallback.

    1000-1004 authentication, 1100-1103 and 1304 account, 1200-1202 invalid, 1203 not found,
    1300-1301 content policy, 1302 rate limit, 1303 parallel-task limit, 5000-5002 server
    (docs/errors.md, "Which Kling code raises which class").
    """
    if code is not None:
        cls = _BY_CODE.get(code)
        if cls is not None:
            return cls
        for low, high, range_cls in _BY_RANGE:
            if low <= code <= high:
                return range_cls
    by_status = _BY_STATUS.get(status)
    if by_status is not None:
        return by_status
    if status >= 500:
        return ServerError
    if status >= 400:
        return InvalidRequestError
    return APIError


_BY_CODE: Mapping[int, type[APIError]] = {
    1100: AccountError,
    1101: QuotaExhaustedError,
    1102: QuotaExhaustedError,
    1103: PermissionDeniedError,
    1203: NotFoundError,
    1302: RateLimitError,
    1303: TaskLimitError,
    1304: PermissionDeniedError,
}
_BY_RANGE: tuple[tuple[int, int, type[APIError]], ...] = (
    (1000, 1099, AuthenticationError),
    (1100, 1199, AccountError),
    (1200, 1299, InvalidRequestError),
    (1300, 1399, ContentPolicyError),
    (5000, 5999, ServerError),
)
_BY_STATUS: Mapping[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: QuotaExhaustedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
_MEANINGS: Mapping[int, str] = {
    1000: "authentication failed",
    1001: "the Authorization header is empty",
    1002: "the Authorization header is invalid",
    1003: "the token is not yet valid",
    1004: "the token has expired",
    1100: "account exception",
    1101: "account in arrears",
    1102: "resource pack used up or expired",
    1103: "no permission for the resource",
    1200: "invalid request",
    1201: "invalid parameter",
    1202: "invalid method",
    1203: "the task or video does not exist",
    1300: "refused by platform policy",
    1301: "refused by content safety",
    1302: "requests too frequent",
    1303: "parallel tasks over the account's limit",
    1304: "refused by the IP whitelist",
    5000: "internal server error",
    5001: "service temporarily unavailable",
    5002: "internal timeout",
}


def _looks_like_html(response: HTTPResponse) -> bool:
    if "html" in response.content_type:
        return True
    return response.body.lstrip()[:1] == b"<"


_TITLE = re.compile(rb"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _describe(response: HTTPResponse) -> str:
    if _looks_like_html(response):
        title = _TITLE.search(response.body[:4096])
        name = title.group(1).decode("utf-8", "replace").strip() if title else ""
        return f"an HTML page{': ' + name if name else ''}"
    if not response.body:
        return "an empty body"
    return f"{len(response.body)} bytes of {response.content_type or 'unknown type'}"


def _excerpt(body: bytes, limit: int = 200) -> str:
    return body[:limit].decode("utf-8", "replace")
