"""Emulator specification: error body shapes, authentication before routing, raw-path ids."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yarl

from kling_async.testing import Fault, KlingEmulator

from .test_emulator import AUTH, EXTEND, bearer, call, create, make_jwt

pytestmark = pytest.mark.anyio

ERROR_KEYS = {"code", "message", "request_id"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_raw(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, Any]:
    """GET `url` exactly as written (no client-side unescaping or dot removal)."""
    async with http.get(yarl.URL(url, encoded=True), headers=headers) as resp:
        return resp.status, await resp.json()


# ---------------------------------------------------------------------------- error bodies


async def test_kling_errors_have_no_data_key(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Kling's own error replies are {code, message, request_id}: no `data` key at all."""
    replies = [
        await create(http, emu.base_url, headers={}),  # 401 / 1001
        await create(http, emu.base_url, video_id=""),  # 400 / 1201
        await call(http, "GET", f"{emu.base_url}{EXTEND}/404404"),  # 404 / 1203
        await call(http, "GET", emu.base_url + "/v1/nope"),  # 404 / 1202
    ]
    assert [401, 400, 404, 404] == [r.status for r in replies]
    assert [ERROR_KEYS] * 4 == [set(r.body) for r in replies]


@pytest.mark.parametrize(
    "fault",
    [Fault.http(503), Fault.rate_limited(1303), Fault.business(1303), Fault.business(1102)],
    ids=repr,
)
async def test_error_faults_have_no_data_key(
    emu: KlingEmulator, http: aiohttp.ClientSession, fault: Fault
) -> None:
    """Injected Kling errors, HTTP 200 + 1303 included, carry no `data` key either."""
    emu.inject(fault, route="create")
    reply = await create(http, emu.base_url)
    assert (fault.status, fault.code) == (reply.status, reply.body["code"])
    assert ERROR_KEYS == set(reply.body)


async def test_only_gateway_errors_carry_data_null(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """A gateway-style error keeps `data: null`; a success carries `data`."""
    emu.inject(Fault.gateway(), route="create")
    gateway = await create(http, emu.base_url)
    success = await create(http, emu.base_url)
    assert {"code": "upstream_error", "data": None} == {
        k: gateway.body[k] for k in ("code", "data")
    }
    assert ERROR_KEYS | {"data"} == set(success.body)


# ---------------------------------------------------------------------------- auth first


@pytest.mark.parametrize("prefix", ["", "/kling"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/videos/lip-sync"),
        ("DELETE", EXTEND + "/123"),
        ("PUT", EXTEND),
        ("GET", EXTEND + "/1/2"),
        ("GET", EXTEND + "/"),
        ("POST", "/v1"),
    ],
)
@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, 1001), (bearer("wrong"), 1002), (bearer(make_jwt(exp=-1)), 1004)],
    ids=["missing", "wrong", "expired"],
)
async def test_unknown_v1_paths_authenticate_first(
    emu: KlingEmulator,
    http: aiohttp.ClientSession,
    prefix: str,
    method: str,
    path: str,
    headers: dict[str, str],
    code: int,
) -> None:
    """An unknown /v1 path with bad or missing credentials gets 401 with the 100x code."""
    reply = await call(http, method, emu.base_url + prefix + path, headers=headers)
    assert (401, code) == (reply.status, reply.body["code"])
    assert ["other"] == [r.route for r in emu.requests]


@pytest.mark.parametrize("prefix", ["", "/kling"])
async def test_unknown_v1_paths_with_good_credentials_are_1202(
    emu: KlingEmulator, http: aiohttp.ClientSession, prefix: str
) -> None:
    """With valid credentials an unknown /v1 path still gets 404 / 1202."""
    reply = await call(http, "GET", emu.base_url + prefix + "/v1/videos/lip-sync")
    assert (404, 1202) == (reply.status, reply.body["code"])


@pytest.mark.parametrize("path", ["/", "/kling", "/favicon.ico", "/v2/x", "/media"])
async def test_paths_outside_v1_are_1202_without_credentials(
    emu: KlingEmulator, http: aiohttp.ClientSession, path: str
) -> None:
    """Paths outside /v1 (and outside /media) get 404 / 1202 whatever the credentials."""
    reply = await call(http, "GET", emu.base_url + path, headers={})
    assert (404, 1202) == (reply.status, reply.body["code"])


@pytest.mark.parametrize(
    ("list_mode", "status", "content_type"),
    [("404", 404, "application/json"), ("html", 200, "text/html")],
)
@pytest.mark.parametrize("headers", [{}, bearer("wrong"), AUTH], ids=["missing", "wrong", "ok"])
async def test_unrouted_list_answers_before_auth(
    http: aiohttp.ClientSession,
    list_mode: str,
    status: int,
    content_type: str,
    headers: dict[str, str],
) -> None:
    """A gateway that does not route the list answers the same with any credentials."""
    async with KlingEmulator(list_mode=list_mode) as emu:
        reply = await call(http, "GET", emu.gateway_url + EXTEND, headers=headers)
        assert (status, content_type) == (reply.status, reply.content_type)
        # creates and queries behind the same gateway still check the key
        assert 401 == (await create(http, emu.gateway_url, headers={})).status


# ---------------------------------------------------------------------------- raw path


async def test_escaped_slash_is_part_of_the_task_id(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """GET .../video-extend/a%2Fb is the task "a/b" (1203 when unknown), not another route."""
    status, body = await get_raw(http, f"{emu.base_url}{EXTEND}/a%2Fb", AUTH)
    assert (404, 1203, "task a/b does not exist") == (status, body["code"], body["message"])
    task_id = (await create(http, emu.base_url, external_task_id="a/b")).body["data"]["task_id"]
    status, body = await get_raw(http, f"{emu.gateway_url}{EXTEND}/a%2Fb", AUTH)
    assert (200, task_id) == (status, body["data"]["task_id"])
    assert ["query", "create", "query"] == [r.route for r in emu.requests]
    assert f"/kling{EXTEND}/a%2Fb" == emu.requests[-1].raw_path


async def test_escaped_dots_are_a_task_id(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """%2E%2E is the task "..", never a step up the path."""
    status, body = await get_raw(http, f"{emu.base_url}{EXTEND}/%2E%2E", AUTH)
    assert (404, 1203, "task .. does not exist") == (status, body["code"], body["message"])
    task_id = (await create(http, emu.base_url, external_task_id="..")).body["data"]["task_id"]
    status, body = await get_raw(http, f"{emu.base_url}{EXTEND}/%2e%2E", AUTH)
    assert (200, task_id) == (status, body["data"]["task_id"])


async def test_literal_dot_segments_are_resolved(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Literal . and .. segments are resolved as RFC 3986 says: .../video-extend/x/.. lists."""
    status, body = await get_raw(http, f"{emu.base_url}/v1/./videos/video-extend/x/..", AUTH)
    assert (200, []) == (status, body["data"])
    assert "list" == emu.requests[-1].route


async def test_escaped_ids_with_other_characters(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Any percent-escaped id is decoded once: %25 is "%", %20 is a space, %3F is "?"."""
    ids = ["50%", "a b", "why?", "ünï"]
    made = {
        ext: (await create(http, emu.base_url, external_task_id=ext)).body["data"]["task_id"]
        for ext in ids
    }
    found: dict[str, Any] = {}
    for ext in ids:
        url = f"{emu.base_url}{EXTEND}/{urllib.parse.quote(ext, safe='')}"
        status, body = await get_raw(http, url, AUTH)
        found[ext] = body["data"]["task_id"] if status == 200 else status
    assert made == found
