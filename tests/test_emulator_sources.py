"""Emulator specification: the text2video and image2video routes, raw over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kling_async.testing import KlingEmulator

from .test_emulator import EXTEND, call, create

pytestmark = pytest.mark.anyio

TEXT = "/v1/videos/text2video"
IMAGE = "/v1/videos/image2video"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize("prefix", ["", "/kling"])
async def test_each_family_holds_its_own_tasks(
    emu: KlingEmulator, http: aiohttp.ClientSession, prefix: str
) -> None:
    """A text2video task is queried and listed on its route only; the extend list lacks it."""
    base = emu.base_url + prefix
    made = await call(http, "POST", base + TEXT, json_body={"prompt": "a fox"})
    assert (200, 0) == (made.status, made.body["code"])
    task_id = made.body["data"]["task_id"]
    await create(http, base)  # an extend beside it

    assert 200 == (await call(http, "GET", f"{base}{TEXT}/{task_id}")).status
    wrong = await call(http, "GET", f"{base}{EXTEND}/{task_id}")
    assert (404, 1203) == (wrong.status, wrong.body["code"])
    listed = await call(http, "GET", base + TEXT)
    assert [task_id] == [t["task_id"] for t in listed.body["data"]]
    assert task_id not in [
        t["task_id"] for t in (await call(http, "GET", base + EXTEND)).body["data"]
    ]
    assert [] == (await call(http, "GET", base + IMAGE)).body["data"]
    assert 2 == emu.count("query")
    assert 1 == emu.count("query", family="text2video")


async def test_a_source_result_has_no_parent_and_can_be_extended(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """A finished image2video has no parent video, costs units, and its video extends (+4.1)."""
    made = await call(
        http,
        "POST",
        emu.base_url + IMAGE,
        json_body={"image": "https://example.com/a.png", "duration": "10", "future_option": 1},
    )
    task_id = made.body["data"]["task_id"]
    emu.set_status(task_id, "succeed")
    task = (await call(http, "GET", f"{emu.base_url}{IMAGE}/{task_id}")).body["data"]
    assert "parent_video" not in task["task_info"]
    assert "1" == task["final_unit_deduction"]
    [video] = task["task_result"]["videos"]
    assert "10.1" == video["duration"]

    extend = await create(http, emu.base_url, video_id=video["id"])
    extended = emu.tasks[extend.body["data"]["task_id"]]
    assert ("10.1", "14.2") == (extended.parent_duration, extended.result_duration)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (TEXT, {}),
        (TEXT, {"prompt": "x", "mode": "fast"}),
        (TEXT, {"prompt": "x", "duration": "7"}),
        (TEXT, {"prompt": "x", "aspect_ratio": "4:3"}),
        (TEXT, {"prompt": "x" * 2501}),
        (IMAGE, {"prompt": "no image"}),
        (IMAGE, {"image": "data:image/png;base64,AAAA"}),
        (IMAGE, {"image": "https://e.com/a.png", "cfg_scale": 2}),
    ],
)
async def test_bad_source_creates_are_1201(
    emu: KlingEmulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> None:
    """What Kling refuses in a source create gets 400 / 1201 and makes no task."""
    reply = await call(http, "POST", emu.base_url + path, json_body=body)
    assert (400, 1201) == (reply.status, reply.body["code"])
    assert {} == emu.tasks
