"""Emulator specification: watermark_info on create, watermark_url and final_unit_deduction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kling_async.testing import KlingEmulator

from .test_emulator import EXTEND, call, create, query

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def statuses_seen(
    http: aiohttp.ClientSession, emu: KlingEmulator, task_id: str, polls: int = 3
) -> list[dict[str, Any]]:
    return [(await query(http, emu.base_url, task_id)).body["data"] for _ in range(polls)]


async def test_watermarked_task_objects(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """watermark_info enabled: "0" deducted while running, then the units and a watermark_url."""
    created = await create(http, emu.base_url, watermark_info={"enabled": True})
    task_id = created.body["data"]["task_id"]
    seen = await statuses_seen(http, emu, task_id)
    assert [("submitted", "0"), ("processing", "0"), ("succeed", "1")] == [
        (o["task_status"], o["final_unit_deduction"]) for o in seen
    ]
    assert [{"enabled": True}] * 3 == [o["watermark_info"] for o in seen]
    (video,) = seen[-1]["task_result"]["videos"]
    assert f"{emu.media_url}/media/{video['id']}_wm.mp4" == video["watermark_url"]
    assert True is emu.tasks[task_id].watermark


async def test_watermark_url_serves_other_bytes(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """The watermarked video is a download of its own, different from the clean one."""
    task_id = (await create(http, emu.base_url, watermark_info={"enabled": True})).body["data"][
        "task_id"
    ]
    (video,) = (await statuses_seen(http, emu, task_id))[-1]["task_result"]["videos"]
    clean = await call(http, "GET", video["url"], headers={})
    marked = await call(http, "GET", video["watermark_url"], headers={})
    assert (200, 200) == (clean.status, marked.status)
    assert emu.media_content(video["id"] + "_wm") == marked.raw != clean.raw


async def test_watermark_disabled(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """watermark_info {"enabled": false} is echoed and no watermark_url appears."""
    task_id = (await create(http, emu.base_url, watermark_info={"enabled": False})).body["data"][
        "task_id"
    ]
    final = (await statuses_seen(http, emu, task_id))[-1]
    assert ({"enabled": False}, "1") == (final["watermark_info"], final["final_unit_deduction"])
    assert ["id", "url", "duration"] == list(final["task_result"]["videos"][0])


async def test_older_shape_without_watermark_info(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """Without watermark_info the older shape stays; only finished tasks show a deduction."""
    emu.fail_video("risky")
    ok = (await create(http, emu.base_url)).body["data"]["task_id"]
    bad = (await create(http, emu.base_url, video_id="risky")).body["data"]["task_id"]
    seen = await statuses_seen(http, emu, ok)
    failed = (await statuses_seen(http, emu, bad))[-1]
    assert [None, None, "1"] == [o.get("final_unit_deduction") for o in seen]
    assert ("failed", "0") == (failed["task_status"], failed["final_unit_deduction"])
    assert not any("watermark_info" in o for o in [*seen, failed])
    assert "watermark_url" not in seen[-1]["task_result"]["videos"][0]


async def test_list_carries_the_new_fields(emu: KlingEmulator, http: aiohttp.ClientSession) -> None:
    """List entries are the same task objects as queries, watermark fields included."""
    task_id = (await create(http, emu.base_url, watermark_info={"enabled": True})).body["data"][
        "task_id"
    ]
    final = (await statuses_seen(http, emu, task_id))[-1]
    listed = await call(http, "GET", emu.base_url + EXTEND)
    assert [final] == listed.body["data"]


async def test_unit_deduction_is_configurable(http: aiohttp.ClientSession) -> None:
    """unit_deduction sets the string a succeeded task reports as final_unit_deduction."""
    async with KlingEmulator(unit_deduction="2.5", polls_to_start=0, polls_to_finish=0) as emu:
        task_id = (await create(http, emu.base_url)).body["data"]["task_id"]
        final = (await query(http, emu.base_url, task_id)).body["data"]
        assert "2.5" == final["final_unit_deduction"]


@pytest.mark.parametrize(
    "value",
    [True, "yes", [], {}, {"enabled": "true"}, {"enabled": 1}, {"enabled": None}],
    ids=repr,
)
async def test_watermark_info_validation(
    emu: KlingEmulator, http: aiohttp.ClientSession, value: Any
) -> None:
    """watermark_info must be an object with a boolean `enabled`, else 400 / 1201."""
    reply = await create(http, emu.base_url, watermark_info=value)
    assert (400, 1201) == (reply.status, reply.body["code"])
    assert "watermark_info" in reply.body["message"]
    assert {} == emu.tasks


async def test_watermark_info_null_and_extra_keys(
    emu: KlingEmulator, http: aiohttp.ClientSession
) -> None:
    """watermark_info null is no watermark request; unknown keys inside it are tolerated."""
    plain = await call(
        http,
        "POST",
        emu.base_url + EXTEND,
        json_body={"video_id": "v", "watermark_info": None},
    )
    extra = await create(http, emu.base_url, watermark_info={"enabled": True, "style": "x"})
    assert (200, 200) == (plain.status, extra.status)
    assert [None, True] == [t.watermark for t in emu.tasks.values()]
