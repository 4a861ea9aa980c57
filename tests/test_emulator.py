"""Tests of the Kling emulator itself, spoken to with raw aiohttp (not the SDK)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest

from kling_async.testing import EmulatedTask, Fault, KlingEmulator, RecordedRequest

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer test-key"}
EXTEND = "/v1/videos/video-extend"


@attrs.frozen
class Reply:
    status: int
    body: Any
    headers: Any
    content_type: str
    raw: bytes


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    hdrs = dict(AUTH if headers is None else headers)
    kwargs: dict[str, Any] = {"headers": hdrs}
    if json_body is not None:
        kwargs["json"] = json_body
    elif data is not None:
        kwargs["data"] = data
        hdrs["Content-Type"] = "application/json"
    async with http.request(method, url, **kwargs) as resp:
        raw = await resp.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return Reply(resp.status, body, resp.headers, resp.content_type, raw)


async def create(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None, **body: Any
) -> Reply:
    body.setdefault("video_id", "827942411241803822")
    return await call(http, "POST", base + EXTEND, json_body=body, headers=headers)


async def query(http: aiohttp.ClientSession, base: str, ident: str) -> Reply:
    return await call(http, "GET", f"{base}{EXTEND}/{ident}")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    *,
    iss: str = "test-access-key",
    secret: str = "test-secret-key",
    now: float | None = None,
    exp: float | None = 1800,
    nbf: float | None = -5,
    alg: str = "HS256",
) -> str:
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"iss": iss}
    if exp is not None:
        claims["exp"] = int(now + exp)
    if nbf is not None:
        claims["nbf"] = int(now + nbf)
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{b64(sig)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FakeClock:
    """A settable clock for `emu.clock`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def emu() -> AsyncIterator[KlingEmulator]:
    async with KlingEmulator() as emulator:
        yield emulator


def assert_envelope(reply: Reply, status: int, code: int) -> None:
    """Kling's envelope: success carries `data`; an error is {code, message, request_id}."""
    assert reply.status == status, reply.body
    assert reply.content_type == "application/json"
    keys = {"code", "message", "request_id"}
    assert (keys | {"data"} if code == 0 else keys) == set(reply.body)
    assert reply.body["code"] == code, reply.body
    assert isinstance(reply.body["message"], str)
    assert reply.body["message"]
    assert len(reply.body["request_id"]) == 36


# ---------------------------------------------------------------------------- shapes


async def test_create_and_query_shapes(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Create returns a submitted 18-digit task id; query returns the full task object."""
    before_ms = int(time.time() * 1000)
    reply = await create(http, emu.base_url, prompt="zoom out", cfg_scale=0.3)
    assert_envelope(reply, 200, 0)
    assert reply.body["message"] == "SUCCEED"
    data = reply.body["data"]
    assert set(data) == {"task_id", "task_status", "created_at", "updated_at"}
    assert data["task_status"] == "submitted"
    assert len(data["task_id"]) == 18
    assert data["task_id"].isdigit()
    assert before_ms <= data["created_at"] == data["updated_at"] <= time.time() * 1000 + 1

    task = emu.tasks[data["task_id"]]
    assert isinstance(task, EmulatedTask)
    assert (task.video_id, task.prompt, task.cfg_scale) == ("827942411241803822", "zoom out", 0.3)
    assert task.negative_prompt is None
    assert task.callback_url is None

    got = await query(http, emu.base_url, data["task_id"])
    assert_envelope(got, 200, 0)
    obj = got.body["data"]
    assert obj == {
        "task_id": data["task_id"],
        "task_status": "submitted",
        "task_status_msg": "",
        "task_info": {
            "parent_video": {
                "id": "827942411241803822",
                "url": f"{emu.media_url}/media/827942411241803822.mp4",
                "duration": "5.0",
            }
        },
        "task_result": {},
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }
    assert obj == task.to_json()
    assert reply.body["request_id"] != got.body["request_id"]


async def test_gateway_prefix_serves_the_same_api(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """The /kling gateway prefix serves create, query, list and media just like the base URL."""
    assert emu.gateway_url == emu.base_url + "/kling"
    reply = await create(http, emu.gateway_url)
    assert_envelope(reply, 200, 0)
    task_id = reply.body["data"]["task_id"]
    assert (await query(http, emu.gateway_url, task_id)).body["data"]["task_id"] == task_id
    listed = await call(http, "GET", emu.gateway_url + EXTEND)
    assert [t["task_id"] for t in listed.body["data"]] == [task_id]
    media = await call(http, "GET", emu.gateway_url + "/media/x.mp4")
    assert media.content_type == "video/mp4"
    assert [r.path for r in emu.requests] == [
        "/kling" + EXTEND,
        f"/kling{EXTEND}/{task_id}",
        "/kling" + EXTEND,
        "/kling/media/x.mp4",
    ]


async def test_unknown_route_is_1202(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Unknown paths and methods get 404 with code 1202 and are counted under route 'other'."""
    for method, path in [
        ("GET", "/v1/videos/lip-sync"),  # text2video and image2video are served
        ("DELETE", EXTEND + "/123"),
        ("PUT", EXTEND),
        ("GET", "/"),
        ("GET", EXTEND + "/1/2"),
    ]:
        assert_envelope(await call(http, method, emu.base_url + path), 404, 1202)
    assert emu.count("other") == 5
    assert emu.count("other", method="delete") == 1


async def test_media_route_needs_no_auth(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Media URLs serve an MP4 (with an ftyp box) and need no Authorization header."""
    for origin in (emu.media_url, emu.base_url):
        reply = await call(http, "GET", origin + "/media/123.mp4", headers={})
        assert reply.status == 200
        assert reply.content_type == "video/mp4"
        assert reply.raw[4:8] == b"ftyp"
    assert emu.count("media") == 2


# ---------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 1001),
        ({"Authorization": ""}, 1001),
        ({"Authorization": "Bearer "}, 1001),
        ({"Authorization": "Basic dGVzdA=="}, 1002),
        (bearer("wrong-key"), 1002),
        (bearer("a.b.c"), 1002),
        (bearer(make_jwt(secret="other-secret")), 1002),
        (bearer(make_jwt(iss="other-access-key")), 1002),
        (bearer(make_jwt(alg="HS512")), 1002),
        (bearer(make_jwt(nbf=600)), 1003),
        (bearer(make_jwt(exp=-1)), 1004),
    ],
    ids=[
        "missing",
        "empty",
        "empty-bearer",
        "basic",
        "wrong-key",
        "garbage-jwt",
        "bad-signature",
        "bad-iss",
        "bad-alg",
        "nbf-future",
        "expired",
    ],
)
async def test_auth_errors(
    emu: KlingEmulator, http: aiohttp.ClientSession, headers: dict[str, str], code: int
) -> None:
    """Missing, wrong or stale credentials get 401 with the matching code and create no task."""
    assert_envelope(await create(http, emu.base_url, headers=headers), 401, code)
    assert_envelope(await call(http, "GET", emu.base_url + EXTEND, headers=headers), 401, code)
    assert_envelope(
        await call(http, "GET", f"{emu.base_url}{EXTEND}/1", headers=headers), 401, code
    )
    assert emu.tasks == {}


async def test_auth_accepts_api_key_and_jwt(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Both the API key and an AK/SK HS256 JWT, with or without exp, are accepted."""
    assert (await create(http, emu.base_url, headers=bearer("test-key"))).status == 200
    assert (await create(http, emu.base_url, headers=bearer(make_jwt()))).status == 200
    assert (await create(http, emu.base_url, headers=bearer(make_jwt(exp=None)))).status == 200
    assert len(emu.tasks) == 3


async def test_jwt_checks_use_the_emulator_clock(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """JWT exp and nbf are judged by emu.clock: too late gives 1004, too early gives 1003."""
    token = bearer(make_jwt())
    emu.clock = lambda: time.time() + 7200
    assert_envelope(await create(http, emu.base_url, headers=token), 401, 1004)
    emu.clock = lambda: time.time() - 60
    assert_envelope(await create(http, emu.base_url, headers=token), 401, 1003)


async def test_custom_credentials(http: aiohttp.ClientSession) -> None:
    """Custom api_key, access_key and secret_key are exposed, accepted and replace defaults."""
    async with KlingEmulator(api_key="k", access_key="ak", secret_key="sk") as emu:
        assert (emu.api_key, emu.access_key, emu.secret_key) == ("k", "ak", "sk")
        assert (await create(http, emu.base_url, headers=bearer("k"))).status == 200
        jwt = bearer(make_jwt(iss="ak", secret="sk"))
        assert (await create(http, emu.base_url, headers=jwt)).status == 200
        assert (await create(http, emu.base_url, headers=AUTH)).body["code"] == 1002


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"prompt": "x"}, 1201, "video_id"),
        ({"video_id": ""}, 1201, "video_id"),
        ({"video_id": 123}, 1201, "video_id"),
        ({"video_id": "1", "prompt": 5}, 1201, "prompt"),
        ({"video_id": "1", "prompt": "x" * 2501}, 1201, "prompt"),
        ({"video_id": "1", "negative_prompt": "x" * 2501}, 1201, "negative_prompt"),
        ({"video_id": "1", "negative_prompt": ["x"]}, 1201, "negative_prompt"),
        ({"video_id": "1", "cfg_scale": "0.5"}, 1201, "cfg_scale"),
        ({"video_id": "1", "cfg_scale": True}, 1201, "cfg_scale"),
        ({"video_id": "1", "cfg_scale": 1.5}, 1201, "cfg_scale"),
        ({"video_id": "1", "cfg_scale": -0.1}, 1201, "cfg_scale"),
        ({"video_id": "1", "callback_url": "ftp://example.com/x"}, 1201, "callback_url"),
        ({"video_id": "1", "callback_url": "not a url"}, 1201, "callback_url"),
        ({"video_id": "1", "external_task_id": 7}, 1201, "external_task_id"),
        ({"video_id": "1", "task_id": 7}, 1201, "task_id"),
    ],
)
async def test_create_validation(
    emu: KlingEmulator, http: aiohttp.ClientSession, body: dict[str, Any], code: int, field: str
) -> None:
    """Each invalid create field gets 400 with code 1201, a message naming it, and no task."""
    reply = await call(http, "POST", emu.base_url + EXTEND, json_body=body)
    assert_envelope(reply, 400, code)
    assert field in reply.body["message"]
    assert emu.tasks == {}


async def test_create_accepts_edge_values(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Create accepts boundary values, explicit nulls and unknown fields."""
    extras: list[dict[str, Any]] = [
        {"prompt": "x" * 2500, "negative_prompt": "", "cfg_scale": 0},
        {"cfg_scale": 1, "callback_url": "https://example.com/hook"},
        {"prompt": None, "cfg_scale": None, "unknown_field": {"a": 1}},
    ]
    for extra in extras:
        assert_envelope(await create(http, emu.base_url, **extra), 200, 0)


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"video"', b""])
async def test_create_body_must_be_a_json_object(
    emu: KlingEmulator, http: aiohttp.ClientSession, data: bytes
) -> None:
    """A create body that is not a JSON object is refused with 400 and code 1200."""
    reply = await call(http, "POST", emu.base_url + EXTEND, data=data)
    assert_envelope(reply, 400, 1200)


async def test_require_parent_task_id(http: aiohttp.ClientSession) -> None:
    """With require_parent_task_id, create needs task_id (else 400/1201) and records it."""
    async with KlingEmulator(require_parent_task_id=True) as emu:
        reply = await create(http, emu.gateway_url)
        assert_envelope(reply, 400, 1201)
        assert "task_id" in reply.body["message"]
        reply = await create(http, emu.gateway_url, task_id="815336423632572487")
        assert_envelope(reply, 200, 0)
        assert emu.tasks[reply.body["data"]["task_id"]].parent_task_id == "815336423632572487"


async def test_forgotten_video_is_1203(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Extending a forgotten video gets 404 with code 1203; other videos still succeed."""
    emu.forget_video("old")
    assert_envelope(await create(http, emu.base_url, video_id="old"), 404, 1203)
    assert_envelope(await create(http, emu.base_url, video_id="new"), 200, 0)


# ---------------------------------------------------------------------------- progression


async def test_progression_by_polls(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """By default polls move a task submitted, processing, succeed, ending in a 9.1 s video."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    seen = [(await query(http, emu.base_url, task_id)).body["data"] for _ in range(4)]
    assert [o["task_status"] for o in seen] == ["submitted", "processing", "succeed", "succeed"]
    final = seen[-1]
    (video,) = final["task_result"]["videos"]
    assert video["duration"] == "9.1"
    assert video["url"] == f"{emu.media_url}/media/{video['id']}.mp4"
    assert final["task_status_msg"] == ""
    assert final["updated_at"] >= final["created_at"]
    assert emu.tasks[task_id].polls == 4
    media = await call(http, "GET", video["url"], headers={})
    assert media.content_type == "video/mp4"


@pytest.mark.parametrize(
    ("start", "finish", "expected"),
    [
        (0, 0, ["succeed", "succeed"]),
        (0, 1, ["processing", "succeed"]),
        (2, 0, ["submitted", "submitted", "succeed"]),
        (1, 2, ["submitted", "processing", "processing", "succeed"]),
    ],
)
async def test_poll_schedule(
    http: aiohttp.ClientSession, start: int, finish: int, expected: list[str]
) -> None:
    """polls_to_start and polls_to_finish set how many queries see submitted and processing."""
    async with KlingEmulator(polls_to_start=start, polls_to_finish=finish) as emu:
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        statuses = [
            (await query(http, emu.base_url, task_id)).body["data"]["task_status"] for _ in expected
        ]
        assert statuses == expected


async def test_progression_by_time_with_fake_clock(http: aiohttp.ClientSession) -> None:
    """With step_seconds=60 a task advances one status per 60 s of emu.clock time."""
    clock = FakeClock()
    async with KlingEmulator(step_seconds=60) as emu:
        emu.clock = clock
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        assert (await query(http, emu.base_url, task_id)).body["data"]["task_status"] == "submitted"
        clock.now += 30
        assert (await query(http, emu.base_url, task_id)).body["data"]["task_status"] == "submitted"
        clock.now += 30
        obj = (await query(http, emu.base_url, task_id)).body["data"]
        assert obj["task_status"] == "processing"
        assert obj["updated_at"] - obj["created_at"] == pytest.approx(60_000, abs=2)
        clock.now += 60
        assert (await query(http, emu.base_url, task_id)).body["data"]["task_status"] == "succeed"


async def test_a_list_page_counts_as_a_look_at_each_task_on_it(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """A list page advances the tasks it shows as a query would (list refresh is a poll)."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    statuses = []
    for _ in range(3):
        listed = await call(http, "GET", emu.base_url + EXTEND)
        statuses.append(listed.body["data"][0]["task_status"])
    assert ["submitted", "processing", "succeed"] == statuses
    assert 3 == emu.tasks[task_id].polls


async def test_manual_control(http: aiohttp.ClientSession) -> None:
    """With auto_advance off, tasks change only via set_status; unknown ids raise KeyError."""
    async with KlingEmulator(auto_advance=False) as emu:
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        for _ in range(3):
            obj = (await query(http, emu.base_url, task_id)).body["data"]
            assert obj["task_status"] == "submitted"
        emu.set_status(task_id, "queueing")
        assert (await query(http, emu.base_url, task_id)).body["data"]["task_status"] == "queueing"
        emu.set_status(task_id, "succeed")
        obj = (await query(http, emu.base_url, task_id)).body["data"]
        assert obj["task_result"]["videos"][0]["duration"] == "9.1"
        emu.set_status(task_id, "failed", message="quota")
        obj = (await query(http, emu.base_url, task_id)).body["data"]
        assert (obj["task_status"], obj["task_status_msg"]) == ("failed", "quota")
        assert obj["task_info"] == {}
        assert obj["task_result"] == {}
        with pytest.raises(KeyError):
            emu.set_status("nope", "succeed")


async def test_set_status_pins_an_auto_task(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """set_status on an auto-advancing task pins it: later polls keep that status."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    emu.set_status(task_id, "processing")
    for _ in range(3):
        assert (await query(http, emu.base_url, task_id)).body["data"][
            "task_status"
        ] == "processing"


async def test_fail_video(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Tasks on a fail_video video end failed with its message and empty info and result."""
    emu.fail_video("bad")
    emu.fail_video("worse", "video too long")
    for video, message in [("bad", "content risk control"), ("worse", "video too long")]:
        task_id = (await create(http, emu.base_url, video_id=video)).body["data"]["task_id"]
        for _ in range(3):
            obj = (await query(http, emu.base_url, task_id)).body["data"]
        assert obj["task_status"] == "failed"
        assert obj["task_status_msg"] == message
        assert obj["task_info"] == {}
        assert obj["task_result"] == {}


# ---------------------------------------------------------------------------- external ids


async def test_external_task_id(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """external_task_id is echoed and queryable; a duplicate is refused with 400 and 1201."""
    reply = await create(http, emu.base_url, external_task_id="mine-1")
    data = reply.body["data"]
    assert data["task_info"] == {"external_task_id": "mine-1"}
    by_ext = (await query(http, emu.base_url, "mine-1")).body["data"]
    assert by_ext["task_id"] == data["task_id"]
    assert by_ext["task_info"]["external_task_id"] == "mine-1"
    assert emu.tasks[data["task_id"]].polls == 1
    dup = await create(http, emu.base_url, external_task_id="mine-1")
    assert_envelope(dup, 400, 1201)
    assert dup.body["message"] == "external_task_id already exists"
    assert len(emu.tasks) == 1


async def test_external_task_id_dropped_by_gateway(http: aiohttp.ClientSession) -> None:
    """With accept_external_task_id off, the id is silently dropped and unqueryable (1203)."""
    async with KlingEmulator(accept_external_task_id=False) as emu:
        for _ in range(2):
            reply = await create(http, emu.gateway_url, external_task_id="mine-1")
            assert_envelope(reply, 200, 0)
            assert "task_info" not in reply.body["data"]
        assert all(t.external_task_id is None for t in emu.tasks.values())
        assert_envelope(await query(http, emu.gateway_url, "mine-1"), 404, 1203)


async def test_unknown_task_is_1203(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Querying an unknown task id gets 404 with code 1203."""
    assert_envelope(await query(http, emu.base_url, "999999999999999999"), 404, 1203)


# ---------------------------------------------------------------------------- limits and list


async def test_max_running(http: aiohttp.ClientSession) -> None:
    """Past max_running unfinished tasks create gets 429/1303; a finished task frees a slot."""
    async with KlingEmulator(max_running=2, polls_to_start=0, polls_to_finish=0) as emu:
        first = (await create(http, emu.base_url)).body["data"]["task_id"]
        assert (await create(http, emu.base_url)).status == 200
        assert_envelope(await create(http, emu.base_url), 429, 1303)
        assert len(emu.tasks) == 2
        assert (await query(http, emu.base_url, first)).body["data"]["task_status"] == "succeed"
        assert_envelope(await create(http, emu.base_url), 200, 0)


async def test_list_pages_newest_first(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """List pages tasks newest first by pageNum/pageSize and refuses bad paging with 1201."""
    ids = [(await create(http, emu.base_url)).body["data"]["task_id"] for _ in range(5)]
    full = await call(http, "GET", emu.base_url + EXTEND + "?pageNum=1&pageSize=30")
    assert_envelope(full, 200, 0)
    assert [t["task_id"] for t in full.body["data"]] == ids[::-1]
    assert full.body["data"][0] == emu.tasks[ids[-1]].to_json()
    page2 = await call(http, "GET", emu.base_url + EXTEND + "?pageNum=2&pageSize=2")
    assert [t["task_id"] for t in page2.body["data"]] == [ids[2], ids[1]]
    page9 = await call(http, "GET", emu.base_url + EXTEND + "?pageNum=9&pageSize=2")
    assert page9.body["data"] == []
    assert emu.requests[-1].query == {"pageNum": "9", "pageSize": "2"}
    for bad in ["pageNum=0", "pageNum=1001", "pageSize=0", "pageSize=501", "pageSize=x"]:
        assert_envelope(await call(http, "GET", f"{emu.base_url}{EXTEND}?{bad}"), 400, 1201)
    ok = await call(http, "GET", f"{emu.base_url}{EXTEND}?pageNum=1000&pageSize=500")
    assert ok.body["data"] == []


async def test_list_modes(http: aiohttp.ClientSession) -> None:
    """list_mode '404' and 'html' mimic gateways without list; other modes raise ValueError."""
    async with KlingEmulator(list_mode="404") as emu:
        assert_envelope(await call(http, "GET", emu.gateway_url + EXTEND), 404, 1202)
    async with KlingEmulator(list_mode="html") as emu:
        reply = await call(http, "GET", emu.gateway_url + EXTEND)
        assert reply.status == 200
        assert reply.content_type == "text/html"
        assert reply.body.startswith("<!doctype html>")
        assert emu.count("list") == 1
    with pytest.raises(ValueError, match="list_mode"):
        KlingEmulator(list_mode="nope")


# ---------------------------------------------------------------------------- faults


REPLY_FAULTS = [
    (Fault.http(500), 500, 5000, None),
    (Fault.http(503, retry_after=7), 503, 5001, "7"),
    (Fault.http(504, message="gateway timeout"), 504, 5002, None),
    (Fault.http(403), 403, 1103, None),
    (Fault.http(401), 401, 1000, None),
    (Fault.http(429, 1102), 429, 1102, None),
    (Fault.rate_limited(), 429, 1302, None),
    (
        Fault.rate_limited(1303, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),
        429,
        1303,
        "Wed, 21 Oct 2015 07:28:00 GMT",
    ),
    (Fault.business(1301), 200, 1301, None),
    (Fault.business(1102, status=429, message="no pack"), 429, 1102, None),
]


@pytest.mark.parametrize("route", ["create", "query"])
@pytest.mark.parametrize(("fault", "status", "code", "retry_after"), REPLY_FAULTS, ids=repr)
async def test_envelope_faults(
    emu: KlingEmulator,
    http: aiohttp.ClientSession,
    route: str,
    fault: Fault,
    status: int,
    code: int,
    retry_after: str | None,
) -> None:
    """A reply fault sends its status, code and Retry-After once, without processing."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"] if route == "query" else ""
    emu.inject(fault, route=route)
    if route == "create":
        reply = await create(http, emu.base_url)
    else:
        reply = await query(http, emu.base_url, task_id)
    assert_envelope(reply, status, code)
    assert reply.headers.get("Retry-After") == retry_after
    if fault.message is not None:
        assert reply.body["message"] == fault.message
    # not processed: nothing created, no poll counted
    assert len(emu.tasks) == (1 if route == "query" else 0)
    if route == "query":
        assert emu.tasks[task_id].polls == 0
    last = emu.requests[-1]
    assert (last.route, last.fault, last.status) == (route, fault, status)
    # the fault was used up
    assert (await create(http, emu.base_url)).status == 200


@pytest.mark.parametrize("route", ["create", "query"])
async def test_page_faults(emu: KlingEmulator, http: aiohttp.ClientSession, route: str) -> None:
    """HTML, gateway and raw faults return those bodies on create and query, unprocessed."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]

    async def send() -> Reply:
        if route == "create":
            return await create(http, emu.base_url)
        return await query(http, emu.base_url, task_id)

    emu.inject(Fault.html(), route=route)
    reply = await send()
    assert (reply.status, reply.content_type) == (502, "text/html")
    assert "502 Bad Gateway" in reply.body
    assert "nginx" in reply.body

    emu.inject(Fault.html(504), route=route)
    assert "504 Gateway Timeout" in (await send()).body

    emu.inject(Fault.gateway(), route=route)
    reply = await send()
    assert reply.status == 500
    assert set(reply.body) == {"code", "message", "data"}
    assert reply.body["code"] == "upstream_error"
    assert reply.body["data"] is None

    emu.inject(Fault.gateway("bad_response", status=502, message='{"code":1303}'), route=route)
    reply = await send()
    assert (reply.status, reply.body["code"], reply.body["message"]) == (
        502,
        "bad_response",
        '{"code":1303}',
    )

    emu.inject(
        Fault.raw(418, b"teapot", content_type="text/plain", headers={"X-Test": "1"}),
        route=route,
    )
    reply = await send()
    assert (reply.status, reply.raw, reply.content_type) == (418, b"teapot", "text/plain")
    assert reply.headers["X-Test"] == "1"

    assert len(emu.tasks) == 1
    assert emu.tasks[task_id].polls == 0


async def test_truncated(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """A truncated fault cuts the JSON reply short after the request was processed."""
    emu.inject(Fault.truncated(), route="create")
    reply = await create(http, emu.base_url)
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert isinstance(reply.body, str)
    assert reply.body.startswith('{"code":0')
    (task,) = emu.tasks.values()  # processed: the task exists
    emu.inject(Fault.truncated(), route="query")
    reply = await query(http, emu.base_url, task.task_id)
    assert reply.status == 200
    assert isinstance(reply.body, str)
    assert task.polls == 1
    assert emu.requests[-1].status == 200


async def test_cut_on_create(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """A cut create reply makes the task, then breaks off mid-body: a payload error."""
    emu.inject(Fault.cut(), route="create")
    with pytest.raises(aiohttp.ClientPayloadError):
        await create(http, emu.base_url)
    assert (1, 200) == (len(emu.tasks), emu.requests[-1].status)


async def test_chunked_on_query(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """A chunked query reply has no Content-Length and the normal body."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    emu.inject(Fault.chunked(), route="query")
    reply = await query(http, emu.base_url, task_id)
    assert (None, "chunked", task_id) == (
        reply.headers.get("Content-Length"),
        reply.headers.get("Transfer-Encoding"),
        reply.body["data"]["task_id"],
    )


async def test_delay(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """A delay fault holds the reply at least that long, then processes normally."""
    emu.inject(Fault.delay(0.05), route="create")
    started = time.monotonic()
    reply = await create(http, emu.base_url)
    assert time.monotonic() - started >= 0.05
    assert_envelope(reply, 200, 0)
    assert len(emu.tasks) == 1


async def test_delay_past_client_timeout_still_creates(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """A create delayed past the client's timeout still creates the task on the server."""
    emu.inject(Fault.delay(0.1), route="create")
    with pytest.raises(asyncio.TimeoutError):
        await http.post(
            emu.base_url + EXTEND,
            json={"video_id": "1"},
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.02),
        )
    for _ in range(100):
        if emu.tasks:
            break
        await asyncio.sleep(0.01)
    assert len(emu.tasks) == 1  # the outcome a client cannot know


async def test_close_does_not_wait_for_delayed_requests(http: aiohttp.ClientSession) -> None:
    """close() returns promptly, cutting off a delayed request that then creates nothing."""
    emu = KlingEmulator()
    await emu.start()
    emu.inject(Fault.delay(30), route="create")
    pending = asyncio.ensure_future(create(http, emu.base_url))
    for _ in range(200):
        if emu.count("create"):
            break
        await asyncio.sleep(0.005)
    started = time.monotonic()
    await emu.close()
    assert time.monotonic() - started < 1
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    assert emu.tasks == {}
    assert emu.requests[0].status is None


async def test_drop_on_create(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """A dropped create disconnects before processing: no task, but the request is logged."""
    emu.inject(Fault.drop(), route="create")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await create(http, emu.base_url, external_task_id="x")
    assert emu.tasks == {}
    (rec,) = emu.requests
    assert isinstance(rec, RecordedRequest)
    assert (rec.route, rec.fault, rec.status) == ("create", Fault.drop(), None)
    assert rec.json == {"video_id": "827942411241803822", "external_task_id": "x"}
    assert (await create(http, emu.base_url)).status == 200


async def test_reply_lost_on_create(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """reply_lost on create makes the task but loses the reply; its external id recovers it."""
    emu.inject(Fault.reply_lost(), route="create")
    with pytest.raises(aiohttp.ClientConnectionError):
        await create(http, emu.base_url, external_task_id="x")
    (task,) = emu.tasks.values()
    assert task.external_task_id == "x"
    assert emu.requests[-1].status is None
    # the client can recover the task by its external id
    assert (await query(http, emu.base_url, "x")).body["data"]["task_id"] == task.task_id


async def test_drop_and_reply_lost_on_query(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """On query, drop skips processing while reply_lost counts the poll; both lose the reply."""
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    # aiohttp retries an idempotent GET once after a disconnect: fault two in a row
    emu.inject(Fault.drop(), route="query", times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await query(http, emu.base_url, task_id)
    assert emu.count("query") == 2
    assert emu.tasks[task_id].polls == 0
    emu.inject(Fault.reply_lost(), route="query", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await query(http, emu.base_url, task_id)
    assert emu.tasks[task_id].polls == 2  # processed, reply lost
    assert [r.status for r in emu.requests] == [200, None, None, None, None]


async def test_injection_queue(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Injections are used oldest first among those matching the route, `times` times each."""
    emu.inject(Fault.http(503), route="query")
    emu.inject(Fault.http(500), times=2)
    emu.inject(Fault.http(504), route="create")
    # create takes the oldest matching injection: the "any" one, twice, then its own
    assert (await create(http, emu.base_url)).status == 500
    assert (await create(http, emu.base_url)).status == 500
    assert (await create(http, emu.base_url)).status == 504
    task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
    assert (await query(http, emu.base_url, task_id)).status == 503
    assert (await query(http, emu.base_url, task_id)).status == 200
    emu.inject(Fault.http(500), route="list")
    assert (await query(http, emu.base_url, task_id)).status == 200
    assert (await call(http, "GET", emu.base_url + "/media/a.mp4")).status == 200
    assert (await call(http, "GET", emu.base_url + EXTEND)).status == 500
    assert [r.fault.status if r.fault else None for r in emu.requests] == [
        500,
        500,
        504,
        None,
        503,
        None,
        None,
        None,
        500,
    ]


async def test_a_burst_faults_every_request_for_its_seconds(http: aiohttp.ClientSession) -> None:
    """inject(..., seconds=) faults every matching request until the window ends on `clock`,
    then none; with `times` too, at most that many."""
    clock = FakeClock()
    async with KlingEmulator() as emu:
        emu.clock = clock
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        emu.inject(Fault.rate_limited(), route="query", seconds=2)
        statuses = [(await query(http, emu.base_url, task_id)).status for _ in range(5)]
        assert 200 == (await create(http, emu.base_url)).status  # another route: untouched
        clock.now += 1.9
        statuses.append((await query(http, emu.base_url, task_id)).status)
        clock.now += 0.1
        statuses.append((await query(http, emu.base_url, task_id)).status)
        assert [429] * 6 + [200] == statuses
        emu.inject(Fault.http(503), route="query", seconds=2, times=2)
        assert [503, 503, 200] == [
            (await query(http, emu.base_url, task_id)).status for _ in range(3)
        ]
        with pytest.raises(ValueError, match="seconds"):
            emu.inject(Fault.http(503), seconds=0)
        with pytest.raises(ValueError, match="seconds"):
            emu.inject(Fault.http(503), seconds=math.inf)


def test_fault_values() -> None:
    """Fault constructors pick default codes, compare and hash by value, validate arguments."""
    assert Fault.http(429) == Fault.rate_limited()
    assert Fault.http(400).code == 1201
    assert Fault.http(418).code == 1200
    assert Fault.http(502).code == 5000
    assert (
        repr(Fault.http(503, retry_after=3)) == "Fault.http(status=503, code=5001, retry_after=3)"
    )
    assert repr(Fault.drop()) == "Fault.drop()"
    assert "b'" in repr(Fault.raw(200, b"x" * 100))
    assert Fault.delay(1).kind == "delay"
    assert Fault.delay(1).seconds == 1.0
    assert hash(Fault.raw(200, b"", headers={"a": "b"})) == hash(
        Fault.raw(200, b"", headers={"a": "b"})
    )
    with pytest.raises(ValueError, match="status"):
        Fault.http(99)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)
    with pytest.raises(ValueError, match="retry_after"):
        Fault.http(429, retry_after=-1)
    with pytest.raises(TypeError):
        Fault.raw(200, "text")  # type: ignore[arg-type]
    assert repr(Fault.cut(after=10)) == "Fault.cut(after=10)"
    assert Fault.cut() == Fault.cut()
    assert Fault.callback_delayed(2).seconds == 2.0
    assert [Fault.chunked().processes_request, Fault.callback_lost().processes_request] == [
        True,
        False,
    ]
    with pytest.raises(ValueError, match="after"):
        Fault.cut(after=-1)
    with pytest.raises(ValueError, match="seconds"):
        Fault.callback_delayed(math.inf)


async def test_inject_and_count_validate(emu: KlingEmulator) -> None:
    """inject refuses unknown routes, non-faults and times=0; count refuses unknown routes."""
    with pytest.raises(ValueError, match="route"):
        emu.inject(Fault.drop(), route="other")
    with pytest.raises(ValueError, match="times"):
        emu.inject(Fault.drop(), times=0)
    with pytest.raises(ValueError, match="route"):
        emu.count("creates")
    with pytest.raises(TypeError):
        emu.inject("drop")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fault", "route"),
    [
        (Fault.range_ignored(), "create"),
        (Fault.range_ignored(), "any"),
        (Fault.callback_lost(), "query"),
        (Fault.callback_lost(), "media"),
        (Fault.business(1303), "media"),
        (Fault.gateway(), "media"),
        (Fault.reply_lost(), "media"),
        (Fault.drop(), "callback"),
        (Fault.http(500), "callback"),
    ],
    ids=repr,
)
async def test_inject_refuses_kinds_foreign_to_the_route(
    emu: KlingEmulator, fault: Fault, route: str
) -> None:
    """A fault kind that means nothing on a route cannot be injected there."""
    with pytest.raises(ValueError, match="cannot be injected"):
        emu.inject(fault, route=route)
    assert emu.count("create") == 0


# ---------------------------------------------------------------------------- log, load, plugin


async def test_request_log(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """Requests are logged as frozen records: method, path, route, status, body, headers."""
    task_id = (await create(http, emu.base_url, prompt="p")).body["data"]["task_id"]
    await query(http, emu.gateway_url, task_id)
    await call(http, "GET", emu.base_url + EXTEND)
    first = emu.requests[0]
    assert (first.method, first.path, first.route, first.status) == ("POST", EXTEND, "create", 200)
    assert first.json == {"prompt": "p", "video_id": "827942411241803822"}
    assert first.headers["authorization"] == "Bearer test-key"
    assert first.fault is None
    assert emu.requests[1].json is None
    assert [emu.count(r) for r in ("create", "query", "list", "media", "other")] == [1, 1, 1, 0, 0]
    assert emu.count("create", method="POST") == 1
    assert emu.count("query", method="POST") == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.status = 1  # type: ignore[misc]


async def test_thousand_concurrent_creates(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """A thousand concurrent creates all succeed with distinct task ids."""
    replies = await asyncio.gather(
        *(create(http, emu.base_url, external_task_id=f"e{i}") for i in range(1000))
    )
    assert {r.status for r in replies} == {200}
    assert len(emu.tasks) == 1000 == len({r.body["data"]["task_id"] for r in replies})
    assert emu.count("create") == 1000


async def test_fixture_from_plugin(
    kling_emulator: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """The pytest plugin's kling_emulator fixture yields a running loopback emulator."""
    assert kling_emulator.base_url.startswith("http://127.0.0.1:")
    assert (await create(http, kling_emulator.base_url)).status == 200


async def test_start_twice_and_unstarted_urls() -> None:
    """base_url before start() and a second start() both raise RuntimeError."""
    emu = KlingEmulator()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = emu.base_url
    async with emu:
        with pytest.raises(RuntimeError, match="already running"):
            await emu.start()


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines += line
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got {lines!r}")


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")
def test_command_line_runs_until_sigint() -> None:
    """python -m kling_async.testing prints its URLs and key, then exits cleanly on SIGINT."""
    env = dict(os.environ, PYTHONWARNINGS="error")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kling_async.testing", "--port", "0", "--api-key", "cli-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out = _wait_for_line(proc, "secret key", timeout=20)
        assert "official base URL: http://127.0.0.1:" in out
        assert "/kling" in out
        assert "cli-key" in out
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "stopped" in stdout
    assert stderr == ""
