"""Specification of the I/O-free protocol: URLs, reading replies, and choosing the exception."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kling_async import (
    AccountError,
    APIError,
    AuthenticationError,
    ContentPolicyError,
    ExtendRequest,
    InvalidRequestError,
    KlingError,
    ListUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExhaustedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    Task,
    TaskLimitError,
    TaskStatus,
    sansio,
)

SAMPLES = pathlib.Path(__file__).parent / "samples"
UTC = dt.timezone.utc
NOW = dt.datetime(2025, 11, 6, 9, 10, tzinfo=UTC)
BASE = "https://gateway.example.com/kling"
JSON = "application/json"
HTML = "text/html"

GATEWAY_HOME = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>New API</title>'
    b'</head><body><div id="root"></div></body></html>'
)
NGINX_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
    b"</html>\r\n"
)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def reply(
    status: int,
    body: bytes | str | dict[str, Any] | list[Any],
    *,
    content_type: str = JSON,
    retry_after: str | None = None,
) -> sansio.HTTPResponse:
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    headers = {"Content-Type": content_type} if content_type else {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return sansio.HTTPResponse(status=status, body=body, headers=headers)


def error_of(response: sansio.HTTPResponse, *, task_id: str | None = "T1") -> KlingError:
    with pytest.raises(KlingError) as info:
        sansio.parse_task(response, NOW, task_id=task_id)
    return info.value


def list_error_of(response: sansio.HTTPResponse) -> KlingError:
    with pytest.raises(KlingError) as info:
        sansio.parse_task_list(response, NOW)
    return info.value


# --- building requests --------------------------------------------------------------------


def test_query_request() -> None:
    """A query is ``GET {base}/v1/videos/video-extend/{id}`` with Accept JSON and no body."""
    request = sansio.query_request(BASE, "815336423632572487")
    expected = sansio.HTTPRequest(
        "GET",
        "https://gateway.example.com/kling/v1/videos/video-extend/815336423632572487",
        "/v1/videos/video-extend/815336423632572487",
        (("Accept", "application/json"),),
        None,
    )
    assert expected == request


@pytest.mark.parametrize(
    ("task_id", "segment"),
    [
        ("CjikY2gHPbcAAAAABI5n9g", "CjikY2gHPbcAAAAABI5n9g"),
        ("order-42_a.b~c", "order-42_a.b~c"),
        ("a/b", "a%2Fb"),
        ("../list", "..%2Flist"),
        ("id with space", "id%20with%20space"),
        ("x?pageNum=1#frag", "x%3FpageNum%3D1%23frag"),
        ("订单-1", "%E8%AE%A2%E5%8D%95-1"),
        ("100%", "100%25"),
    ],
)
def test_query_request_quotes_the_id_as_one_path_segment(task_id: str, segment: str) -> None:
    """Any id (an external id especially) stays one path segment: ``/ ? # %`` are quoted."""
    request = sansio.query_request(BASE, task_id)
    assert f"/v1/videos/video-extend/{segment}" == request.path
    assert BASE + request.path == request.url


@given(st.text(min_size=1))
def test_query_request_never_leaves_the_task_path(task_id: str) -> None:
    """Whatever the id, the path is the extend path plus one segment with no query."""
    path = sansio.query_request(BASE, task_id).path
    prefix, _, segment = path.rpartition("/")
    assert ("/v1/videos/video-extend", False) == (prefix, any(c in segment for c in "/?#"))


def test_list_request() -> None:
    """A list is ``GET {base}/v1/videos/video-extend?pageNum=&pageSize=`` with Accept JSON."""
    request = sansio.list_request(BASE, 2, 30)
    expected = sansio.HTTPRequest(
        "GET",
        "https://gateway.example.com/kling/v1/videos/video-extend?pageNum=2&pageSize=30",
        "/v1/videos/video-extend?pageNum=2&pageSize=30",
        (("Accept", "application/json"),),
        None,
    )
    assert expected == request


def test_requests_carry_no_authorization() -> None:
    """sansio never sees credentials: the session adds ``Authorization`` itself."""
    requests = [
        sansio.create_request(BASE, ExtendRequest(video_id="v")),
        sansio.query_request(BASE, "1"),
        sansio.list_request(BASE, 1, 30),
    ]
    assert [] == [name for r in requests for name, _ in r.headers if name == "Authorization"]


# --- the error table ------------------------------------------------------------------------

# api.md "Errors": one row per business code, with its HTTP status.
ERROR_TABLE = [
    (401, 1000, AuthenticationError),
    (401, 1001, AuthenticationError),
    (401, 1002, AuthenticationError),
    (401, 1003, AuthenticationError),
    (401, 1004, AuthenticationError),
    (429, 1100, AccountError),
    (429, 1101, QuotaExhaustedError),
    (429, 1102, QuotaExhaustedError),
    (403, 1103, PermissionDeniedError),
    (400, 1200, InvalidRequestError),
    (400, 1201, InvalidRequestError),
    (404, 1202, InvalidRequestError),
    (404, 1203, NotFoundError),
    (400, 1300, ContentPolicyError),
    (400, 1301, ContentPolicyError),
    (429, 1302, RateLimitError),
    (429, 1303, TaskLimitError),
    (429, 1304, PermissionDeniedError),
    (500, 5000, ServerError),
    (503, 5001, ServerError),
    (504, 5002, ServerError),
]


@pytest.mark.parametrize(("status", "code", "cls"), ERROR_TABLE)
def test_error_class_for_each_row_of_the_error_table(
    status: int, code: int, cls: type[APIError]
) -> None:
    """Each documented (status, code) pair maps to its exception class, exactly."""
    assert cls is sansio.error_class_for(status, code)


@pytest.mark.parametrize(("status", "code", "cls"), ERROR_TABLE)
def test_error_envelope_raises_its_class_with_all_details(
    status: int, code: int, cls: type[APIError]
) -> None:
    """An error envelope raises its class carrying status, code, message, request and task."""
    body = {"code": code, "message": f"kling says {code}", "request_id": "req-1", "data": None}
    error = error_of(reply(status, body), task_id="815336423632572487")
    assert cls is type(error)
    assert isinstance(error, APIError)
    expected = (status, code, f"kling says {code}", "req-1", "815336423632572487", None, None)
    actual = (
        error.status,
        error.code,
        error.message,
        error.request_id,
        error.task_id,
        error.gateway_code,
        error.retry_after,
    )
    assert expected == actual


@pytest.mark.parametrize(
    ("name", "status", "cls", "code", "request_id"),
    [
        (
            "error_401_1004.json",
            401,
            AuthenticationError,
            1004,
            "c9d8e7f6-a5b4-4c3d-8e2f-1a0b9c8d7e61",
        ),
        (
            "error_429_1101.json",
            429,
            QuotaExhaustedError,
            1101,
            "d0e1f2a3-b4c5-4d6e-9f7a-8b9c0d1e2f73",
        ),
        ("error_429_1302.json", 429, RateLimitError, 1302, "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a85"),
        ("error_429_1303.json", 429, TaskLimitError, 1303, "f2a3b4c5-d6e7-4f8a-9b0c-1d2e3f4a5b97"),
        ("error_500_5000.json", 500, ServerError, 5000, "a3b4c5d6-e7f8-4a9b-8c1d-2e3f4a5b6c09"),
    ],
)
def test_recorded_error_envelopes(
    name: str, status: int, cls: type[APIError], code: int, request_id: str
) -> None:
    """Each recorded error envelope raises its class with the recorded code and request id."""
    error = error_of(reply(status, sample(name)))
    assert isinstance(error, APIError)
    assert (cls, status, code, request_id) == (
        type(error),
        error.status,
        error.code,
        error.request_id,
    )


def test_recorded_error_keeps_the_server_message() -> None:
    """The message is the server's own words."""
    error = error_of(reply(429, sample("error_429_1303.json")))
    assert isinstance(error, APIError)
    assert "parallel task over resource pack limit" == error.message


def test_error_without_message_gets_the_documented_meaning() -> None:
    """An envelope with an empty message says what its code means."""
    error = error_of(reply(429, {"code": 1303, "message": "", "request_id": "r"}))
    assert isinstance(error, APIError)
    assert "parallel tasks over the account's limit" == error.message


def test_error_str_names_status_code_task_and_request() -> None:
    """``str(error)`` carries everything a log line needs."""
    error = error_of(reply(429, sample("error_429_1302.json")), task_id="T9")
    text = str(error)
    assert all(part in text for part in ("HTTP 429", "code 1302", "task T9", "request e1f2a3b4"))


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, 1099, AuthenticationError),
        (429, 1199, AccountError),
        (400, 1299, InvalidRequestError),
        (400, 1399, ContentPolicyError),
        (500, 5999, ServerError),
    ],
)
def test_undocumented_codes_fall_in_their_range(
    status: int, code: int, cls: type[APIError]
) -> None:
    """A new code inside a documented range gets that range's class."""
    assert cls is sansio.error_class_for(status, code)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (402, QuotaExhaustedError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (418, InvalidRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (200, APIError),
    ],
)
def test_without_a_business_code_the_http_status_decides(status: int, cls: type[APIError]) -> None:
    """With no usable code (or an unknown one) the HTTP status picks the class."""
    assert (cls, cls) == (
        sansio.error_class_for(status, None),
        sansio.error_class_for(status, 9999),
    )


def test_business_code_wins_over_http_status() -> None:
    """The business code decides even when the HTTP status says otherwise (api.md)."""
    assert TaskLimitError is sansio.error_class_for(500, 1303)


# --- HTTP 200 that is not a success -------------------------------------------------------


def test_http_200_with_a_nonzero_code_is_an_error() -> None:
    """A gateway's HTTP 200 with a non-zero code raises that code's error, status 200 kept."""
    error = error_of(reply(200, sample("error_429_1303.json")))
    assert isinstance(error, TaskLimitError)
    assert (200, 1303) == (error.status, error.code)


def test_code_zero_with_an_error_status_is_still_an_error() -> None:
    """``code`` 0 counts as success only with a 2xx status."""
    error = error_of(reply(500, {"code": 0, "message": "", "data": None}))
    assert isinstance(error, ServerError)
    assert 500 == error.status


def test_string_zero_code_is_success() -> None:
    """A gateway that spells the success code as ``"0"`` still succeeds."""
    body = {"code": "0", "message": "ok", "data": {"task_id": "1", "task_status": "succeed"}}
    assert "1" == sansio.parse_task(reply(200, body), NOW).task_id


# --- bodies that are not Kling envelopes --------------------------------------------------


def test_nginx_502_page_is_a_server_error() -> None:
    """A proxy's HTML 502 page is a ServerError with no code, naming the page in its message."""
    error = error_of(reply(502, sample("nginx_502.html"), content_type=HTML))
    assert isinstance(error, ServerError)
    expected = (502, None, None, "T1")
    assert expected == (error.status, error.code, error.request_id, error.task_id)
    assert "502 Bad Gateway" in error.message


def test_html_page_with_status_200_is_a_non_json_decode_error() -> None:
    """An HTML page with status 200 (an unrouted path) is a decode error marked not JSON."""
    error = error_of(reply(200, GATEWAY_HOME, content_type=HTML))
    assert isinstance(error, ResponseDecodeError)
    assert (200, False) == (error.status, error.is_json)
    assert error.excerpt.startswith("<!doctype html>")
    assert "New API" in str(error)


def test_html_page_without_content_type_is_recognised() -> None:
    """An HTML body is recognised by its first byte when the content type is missing."""
    error = error_of(reply(200, b"\n  " + GATEWAY_HOME, content_type=""))
    assert isinstance(error, ResponseDecodeError)
    assert "an HTML page: New API" in str(error)


def test_truncated_json_at_200_is_a_non_json_decode_error() -> None:
    """A body cut short is not JSON: a decode error that a query may retry."""
    body = sample("query_succeed.json")
    error = error_of(reply(200, body[: len(body) // 2]))
    assert isinstance(error, ResponseDecodeError)
    assert (200, False) == (error.status, error.is_json)


def test_truncated_json_at_502_is_a_server_error() -> None:
    """An error status whose body does not parse is the HTTP error, not a decode error."""
    error = error_of(reply(502, b'{"code": 5000, "mess'))
    assert isinstance(error, ServerError)
    assert (502, None) == (error.status, error.code)


def test_empty_body_at_200_is_a_decode_error() -> None:
    """An empty 200 reply is a non-JSON decode error that says it was empty."""
    error = error_of(reply(200, b""))
    assert isinstance(error, ResponseDecodeError)
    assert (False, True) == (error.is_json, "empty body" in str(error))


@pytest.mark.parametrize("body", [b"[]", b'"SUCCEED"', b"null", b"42", b"true"])
def test_json_that_is_not_an_object_is_a_json_decode_error(body: bytes) -> None:
    """JSON of the wrong shape at 200 is a decode error marked as JSON (never retried)."""
    error = error_of(reply(200, body))
    assert isinstance(error, ResponseDecodeError)
    assert (200, True) == (error.status, error.is_json)


@pytest.mark.parametrize("body", [b"[]", b'"Bad Gateway"', b"null"])
def test_json_that_is_not_an_object_at_an_error_status_is_the_http_error(body: bytes) -> None:
    """At an error status a non-envelope JSON body gives the HTTP status's error."""
    error = error_of(reply(503, body))
    assert isinstance(error, ServerError)
    assert 503 == error.status


def test_missing_code_at_200_is_a_json_decode_error() -> None:
    """A 200 envelope without ``code`` is a JSON-shaped decode error keeping the request id."""
    body = {"message": "SUCCEED", "request_id": "r-7", "data": {"task_id": "1"}}
    error = error_of(reply(200, body))
    assert isinstance(error, ResponseDecodeError)
    assert (True, "r-7") == (error.is_json, error.request_id)


def test_missing_code_at_an_error_status_is_the_http_error() -> None:
    """An error status with an envelope lacking ``code`` gives the HTTP status's error."""
    error = error_of(reply(429, {"message": "slow down"}))
    assert isinstance(error, RateLimitError)
    assert (429, None, "slow down") == (error.status, error.code, error.message)


def test_success_without_data_is_a_json_decode_error() -> None:
    """A success envelope whose ``data`` is not a task object is a JSON-shaped decode error."""
    error = error_of(reply(200, {"code": 0, "message": "SUCCEED", "request_id": "r"}))
    assert isinstance(error, ResponseDecodeError)
    assert (True, "r") == (error.is_json, error.request_id)


# --- gateway envelopes ----------------------------------------------------------------------


def test_gateway_string_code_with_embedded_kling_json() -> None:
    """A new-api envelope keeps its code as ``gateway_code`` and Kling's embedded reply decides."""
    error = error_of(reply(429, sample("gateway_string_code_embedded.json")))
    assert isinstance(error, TaskLimitError)
    expected = (
        429,
        1303,
        "bad_response_status_code",
        "parallel task over resource pack limit",
        "0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e",
        "T1",
    )
    actual = (
        error.status,
        error.code,
        error.gateway_code,
        error.message,
        error.request_id,
        error.task_id,
    )
    assert expected == actual


def test_gateway_embedded_kling_json_after_a_prefix() -> None:
    """Kling's JSON is found inside a message that wraps it in the gateway's own words."""
    inner = {"code": 1102, "message": "resource pack exhausted", "request_id": "k-1"}
    body = {"code": "upstream_error", "message": f"status 429: {json.dumps(inner)}", "data": None}
    error = error_of(reply(429, body))
    assert isinstance(error, QuotaExhaustedError)
    assert (1102, "upstream_error", "k-1") == (error.code, error.gateway_code, error.request_id)


def test_gateway_string_code_without_kling_json() -> None:
    """A string code with a plain message: the status decides, the gateway's code is kept."""
    error = error_of(reply(503, sample("gateway_string_code.json")))
    assert isinstance(error, ServerError)
    expected = (503, None, "get_channel_failed")
    assert expected == (error.status, error.code, error.gateway_code)
    assert error.message.startswith("no available channel")
    assert "gateway code 'get_channel_failed'" in str(error)


def test_gateway_string_code_at_http_200_is_an_error() -> None:
    """A non-zero string code is a failure even with HTTP 200."""
    error = error_of(reply(200, sample("gateway_string_code.json")))
    assert isinstance(error, APIError)
    assert (200, None, "get_channel_failed") == (error.status, error.code, error.gateway_code)


def test_gateway_message_with_broken_embedded_json_is_kept_as_text() -> None:
    """Braces that are not JSON leave the message as the gateway wrote it."""
    body = {"code": "bad_response", "message": "upstream said {not json}", "data": None}
    error = error_of(reply(500, body))
    assert isinstance(error, ServerError)
    assert (None, "upstream said {not json}") == (error.code, error.message)


def test_numeric_string_code_is_a_business_code() -> None:
    """A gateway that spells Kling's code as a string (``"1302"``) keeps the business code."""
    error = error_of(reply(429, {"code": "1302", "message": "too fast"}))
    assert isinstance(error, RateLimitError)
    assert (1302, None) == (error.code, error.gateway_code)


@pytest.mark.parametrize("code", ["--5", "-", "²", "1302x"])
def test_malformed_string_codes_are_gateway_codes(code: str) -> None:
    """A string code that is not a plain integer is kept as a gateway code, never a crash."""
    error = error_of(reply(500, {"code": code, "message": "odd"}))
    assert isinstance(error, ServerError)
    assert (None, code) == (error.code, error.gateway_code)


# --- Retry-After ------------------------------------------------------------------------------


def test_retry_after_seconds_is_carried() -> None:
    """``Retry-After: 30`` on a 429 sets ``error.retry_after`` to 30 seconds."""
    error = error_of(reply(429, sample("error_429_1302.json"), retry_after="30"))
    assert isinstance(error, RateLimitError)
    assert 30.0 == error.retry_after


def test_retry_after_http_date_is_carried_as_seconds_from_now() -> None:
    """``Retry-After`` as an HTTP date is the seconds from ``now`` until then."""
    error = error_of(
        reply(429, sample("error_429_1302.json"), retry_after="Thu, 06 Nov 2025 09:11:30 GMT")
    )
    assert isinstance(error, RateLimitError)
    assert 90.0 == error.retry_after


def test_retry_after_on_an_html_error_page_is_carried() -> None:
    """A proxy's 503 page with ``Retry-After`` carries it too."""
    error = error_of(reply(503, b"<html>busy</html>", content_type=HTML, retry_after="120"))
    assert isinstance(error, ServerError)
    assert 120.0 == error.retry_after


def test_response_reads_its_two_headers() -> None:
    """``content_type`` and ``retry_after`` come from the headers; absent, they are empty."""
    full = sansio.HTTPResponse(
        status=429, body=b"", headers={"Content-Type": "text/html", "Retry-After": "5"}
    )
    bare = sansio.HTTPResponse(status=200, body=b"")
    expected = ("text/html", "5", "", None)
    assert expected == (full.content_type, full.retry_after, bare.content_type, bare.retry_after)


def test_header_names_are_case_insensitive() -> None:
    """Header names are case-insensitive (RFC 9110): lowercase names, as h11 or HTTP/2 give."""
    response = sansio.HTTPResponse(
        status=429,
        body=sample("error_429_1302.json"),
        headers={"content-type": "application/json", "retry-after": "30"},
    )
    error = error_of(response)
    assert isinstance(error, RateLimitError)
    assert ("application/json", "30", 30.0) == (
        response.content_type,
        response.retry_after,
        error.retry_after,
    )


def test_retry_after_absent_or_unreadable_is_none() -> None:
    """No header, or one that is neither seconds nor a date, leaves ``retry_after`` None."""
    errors = [
        error_of(reply(429, sample("error_429_1302.json"), retry_after=value))
        for value in (None, "soon")
    ]
    assert [None, None] == [getattr(error, "retry_after", "missing") for error in errors]


# --- list unavailable -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        reply(404, NGINX_404, content_type=HTML),
        reply(404, b"", content_type=""),
        reply(404, {"code": 1202, "message": "invalid method", "request_id": "r"}),
        reply(400, {"code": 1202, "message": "invalid method", "request_id": "r"}),
        reply(200, {"code": 1202, "message": "invalid method", "request_id": "r"}),
        reply(404, {"code": "not_found", "message": "Invalid URL (GET /kling/v1/...)"}),
        reply(200, GATEWAY_HOME, content_type=HTML),
        reply(200, GATEWAY_HOME, content_type=""),
    ],
    ids=[
        "404-nginx",
        "404-empty",
        "404-1202",
        "400-1202",
        "200-1202",
        "404-gateway",
        "200-html",
        "200-html-untyped",
    ],
)
def test_list_unavailable(response: sansio.HTTPResponse) -> None:
    """A 404, code 1202 or an HTML page at 200 means the base URL offers no list endpoint."""
    error = list_error_of(response)
    assert isinstance(error, ListUnavailableError)
    assert "does not offer the list endpoint" in str(error)


def test_list_unavailable_chains_the_server_error() -> None:
    """The API error that revealed it is kept as the cause."""
    error = list_error_of(reply(404, {"code": 1202, "message": "invalid method"}))
    assert isinstance(error.__cause__, InvalidRequestError)
    assert 1202 == error.__cause__.code


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (reply(429, sample("error_429_1302.json")), RateLimitError),
        (reply(401, sample("error_401_1004.json")), AuthenticationError),
        (reply(400, {"code": 1201, "message": "pageSize"}), InvalidRequestError),
        (reply(502, sample("nginx_502.html"), content_type=HTML), ServerError),
    ],
)
def test_list_passes_other_errors_through(response: sansio.HTTPResponse, cls: type) -> None:
    """Other failures of a list are their own errors, not "unavailable"."""
    assert cls is type(list_error_of(response))


def test_list_whose_data_is_not_an_array_is_a_json_decode_error() -> None:
    """A list reply whose ``data`` is an object is a JSON-shaped decode error."""
    error = list_error_of(reply(200, sample("query_succeed.json")))
    assert isinstance(error, ResponseDecodeError)
    assert (True, "e3a1b7c4-6d8f-4e2a-9b5c-7f0d3e1a2c64") == (error.is_json, error.request_id)


def test_list_with_a_malformed_task_is_a_json_decode_error() -> None:
    """One task of the wrong shape makes the page a decode error (nothing half-read)."""
    body = {"code": 0, "data": [{"task_id": "1", "task_status": "succeed"}, {"task_id": "2"}]}
    error = list_error_of(reply(200, body))
    assert isinstance(error, ResponseDecodeError)
    assert error.is_json


# --- nothing but KlingError escapes -----------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
_code = (
    st.none() | st.integers() | st.text() | st.sampled_from([0, "0", 1302, 1303, "x", "--5", "²"])
)
_wire_task = st.fixed_dictionaries(
    {},
    optional={
        "task_id": _json | st.sampled_from(["1", 815336423632572487]),
        "task_status": _json | st.sampled_from(["succeed", "queueing"]),
        "task_status_msg": _json,
        "created_at": _json | st.integers(min_value=-(10**20), max_value=10**20),
        "updated_at": _json,
        "task_info": _json
        | st.fixed_dictionaries({}, optional={"parent_video": _json, "external_task_id": _json}),
        "task_result": _json
        | st.fixed_dictionaries(
            {},
            optional={
                "videos": _json
                | st.lists(st.dictionaries(st.sampled_from(["id", "url", "duration"]), _json))
            },
        ),
    },
)
_envelope = st.fixed_dictionaries(
    {},
    optional={
        "code": _code,
        "message": _json | st.text() | st.just('{"code": "--5"}'),
        "request_id": _json,
        "data": _json | _wire_task | st.lists(_wire_task, max_size=3),
    },
)
_status = st.sampled_from([200, 201, 204, 302, 400, 401, 404, 429, 500, 502, 503, 504])
_retry_after = st.none() | st.text(max_size=40)


def _only_kling_errors(response: sansio.HTTPResponse) -> None:
    for parse in (sansio.parse_created, sansio.parse_task, sansio.parse_task_list):
        try:
            result = parse(response, NOW)
        except KlingError:
            continue
        assert isinstance(result, (Task, list))


@settings(deadline=None)  # a slow CI runner must not turn a fuzz run flaky
@given(status=_status, document=_envelope | _json, retry_after=_retry_after)
@example(status=500, document={"code": "--5", "message": "x"}, retry_after=None)
@example(status=500, document={"code": "²", "message": "x"}, retry_after=None)
@example(status=500, document={"code": "x", "message": '{"code": "--5"}'}, retry_after=None)
@example(status=429, document={"code": 1302, "message": "x"}, retry_after="²")
def test_any_json_reply_raises_only_kling_errors(
    status: int, document: Any, retry_after: str | None
) -> None:
    """Whatever JSON comes back, parsing returns models or raises a KlingError, nothing else."""
    _only_kling_errors(reply(status, json.dumps(document).encode(), retry_after=retry_after))


@settings(deadline=None)  # a slow CI runner must not turn a fuzz run flaky
@given(status=_status, body=st.binary(max_size=200), retry_after=_retry_after)
@example(status=200, body=b"[" * 5000, retry_after=None)
@example(status=200, body=b"\xff\xfe\x00", retry_after=None)
def test_any_bytes_raise_only_kling_errors(
    status: int, body: bytes, retry_after: str | None
) -> None:
    """Whatever bytes come back, parsing returns models or raises a KlingError, nothing else."""
    _only_kling_errors(reply(status, body, content_type="", retry_after=retry_after))


@pytest.mark.parametrize("status", [200, 502])
def test_a_huge_numeric_string_code_is_a_gateway_code(status: int) -> None:
    """A code of thousands of digits (int() refuses those) is kept as a gateway code."""
    error = error_of(reply(status, {"code": "1" * 5000, "message": "x"}))

    assert isinstance(error, APIError)
    assert error.code is None
    assert error.gateway_code == "1" * 5000


def test_a_create_reply_without_a_status_is_a_submitted_task() -> None:
    """The task id alone proves the create made a task: its status defaults to submitted."""
    task = sansio.parse_created(
        reply(200, {"code": 0, "message": "SUCCEED", "data": {"task_id": "42"}}), NOW
    )

    assert ("42", TaskStatus.SUBMITTED) == (task.task_id, task.status)
