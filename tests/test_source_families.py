"""Specification of the task families: text-to-video and image-to-video creates, waited on
through the extend's machinery (same handles, polls, list refresh, callbacks, look-ups), each
on its own routes, against the emulator over real HTTP."""

from __future__ import annotations

import base64
import decimal
import json
import pathlib
from typing import Any

import anyio
import pytest

from kling_async import (
    CameraControl,
    ImageToVideo,
    InvalidArgumentError,
    NotFoundError,
    PollPolicy,
    TaskFamily,
    TaskHandle,
    TaskStatus,
    TextToVideo,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official
from .test_callbacks import aiohttp_app

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def gather(handles: list[TaskHandle]) -> None:
    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(handle.wait)


def bodies(emu: KlingEmulator, family: str) -> list[Any]:
    return [r.json for r in emu.requests if r.route == "create" and r.family == family]


# -- create and wait ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [official, gateway])
async def test_text_to_video_creates_and_waits_on_its_own_routes(make: Any) -> None:
    """A text-to-video is created on /v1/videos/text2video and polled there, never on extend's."""
    async with KlingEmulator() as emu, make(emu) as session:
        handle = await session.text_to_video(
            "a red fox in snow", mode="pro", duration=10, aspect_ratio="9:16", extra={"seed": 7}
        )
        task = await handle

    assert TaskStatus.SUCCEED == task.status
    assert TaskFamily.TEXT2VIDEO == handle.family
    assert task.parent_video is None
    assert task.video is not None
    assert 10.1 == task.video.duration
    assert task.cost is not None
    assert decimal.Decimal(1) == task.cost.units  # what it cost, read as for an extend
    [body] = bodies(emu, "text2video")
    expected = {
        "prompt": "a red fox in snow",
        "model_name": "kling-v1",
        "mode": "pro",
        "duration": "10",
        "aspect_ratio": "9:16",
        "seed": 7,
    }
    assert expected == {k: v for k, v in body.items() if k != "external_task_id"}
    assert emu.count("query", family="text2video") >= 1
    assert 0 == emu.count("query", family="video-extend")
    assert 0 == emu.count("other")


async def test_image_to_video_reads_a_local_file(tmp_path: pathlib.Path) -> None:
    """An image path is read and sent as bare base64; the task waits on the image2video routes."""
    image = tmp_path / "first.png"
    image.write_bytes(PNG)
    async with KlingEmulator() as emu, official(emu) as session:
        handle = await session.image_to_video(
            image, image_tail="https://example.com/last.png", prompt="it walks"
        )
        task = await handle

    assert TaskStatus.SUCCEED == task.status
    [body] = bodies(emu, "image2video")
    assert base64.b64encode(PNG).decode() == body["image"]
    assert "https://example.com/last.png" == body["image_tail"]
    assert emu.count("query", family="image2video") >= 1
    assert 0 == emu.count("query", family="text2video") + emu.count("query", family="video-extend")


async def test_a_text_to_video_result_is_extended_with_its_length() -> None:
    """The video a text-to-video made is an extend's source: its length adds up."""
    async with KlingEmulator() as emu, official(emu) as session:
        source = await (await session.text_to_video("a lighthouse at dusk"))
        assert source.video is not None
        extended = await (await session.extend(source.video.id, prompt="the light turns on"))

    assert extended.parent_video is not None
    assert (source.video.id, 5.1) == (extended.parent_video.id, extended.parent_video.duration)
    assert extended.video is not None
    assert 9.2 == extended.video.duration


async def test_session_task_takes_a_family() -> None:
    """``task(id, family=)`` polls an existing task on its family's route; without it, an extend."""
    async with KlingEmulator() as emu:
        async with official(emu) as maker:
            made = await maker.text_to_video("a kite")
        async with official(emu) as session:
            task = await session.task(made.task_id, family="text2video")
            assert TaskStatus.SUCCEED == task.status
            with pytest.raises(NotFoundError):
                await session.get_task(made.task_id)  # the extend route does not know it
            again = await session.get_task(made.task_id, family=TaskFamily.TEXT2VIDEO)
            assert made.task_id == again.task_id


async def test_list_tasks_reads_one_familys_list() -> None:
    """``list_tasks(family=...)`` pages through that family's tasks only."""
    async with KlingEmulator() as emu, official(emu) as session:
        made = [await session.text_to_video(f"scene {n}") for n in range(3)]
        await session.extend("vid-1")
        listed = [task.task_id async for task in session.list_tasks(family="text2video")]
        extends = [task async for task in session.list_tasks()]

    assert [h.task_id for h in reversed(made)] == listed
    assert ["vid-1"] == [t.parent_video.id for t in extends if t.parent_video is not None]


# -- list refresh ------------------------------------------------------------------------------


async def test_waits_on_twenty_text_to_videos_share_list_pages() -> None:
    """20 pending text-to-videos are refreshed by their family's list pages, not 20 queries."""
    async with KlingEmulator() as emu, official(emu) as session:
        handles = [await session.text_to_video(f"scene {n}") for n in range(20)]
        queries = emu.count("query")
        await gather(handles)
        stats = session.statistics()

    assert all(h.done for h in handles)
    assert queries == emu.count("query")  # every refresh came through the list
    lists = emu.count("list", family="text2video")
    assert 2 <= lists == stats.list_requests <= 6
    assert 0 == emu.count("list", family="video-extend")


async def test_one_list_round_per_family_with_pending_waits() -> None:
    """Extends and text-to-videos pending together: each family's list is read for its own."""
    async with KlingEmulator() as emu, official(emu) as session:
        sources = [await session.text_to_video(f"scene {n}") for n in range(5)]
        extends = [await session.extend(f"vid-{n}") for n in range(5)]
        queries = emu.count("query")
        await gather([*sources, *extends])

    assert all(h.done for h in sources + extends)
    assert queries == emu.count("query")
    text_lists = emu.count("list", family="text2video")
    extend_lists = emu.count("list", family="video-extend")
    assert 2 <= text_lists <= 6
    assert text_lists == extend_lists  # one page of each family per round
    assert 0 == emu.count("list", family="image2video")


# -- callbacks ---------------------------------------------------------------------------------


async def test_text_to_video_waits_end_from_callbacks() -> None:
    """A text-to-video gets a receiver token; its callbacks end the wait: one confirming query."""
    async with (
        aiohttp_app() as receiver,
        KlingEmulator(task_seconds=lambda task: (0.05, 0.1)) as emu,
        official(emu, callbacks=receiver, poll_policy=PollPolicy()) as session,
    ):
        handles = [await session.text_to_video(f"scene {n}") for n in range(5)]
        with anyio.fail_after(10):  # polls alone would take far longer
            await gather(handles)
        await emu.drain_callbacks()

    assert all(h.done for h in handles)
    assert all(emu.tasks[h.task_id].callback_url for h in handles)
    assert 5 == emu.count("query", family="text2video")  # one confirm each
    assert 0 == emu.count("list")
    assert {200} == {c.status for c in emu.callbacks}


# -- creates in doubt --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [official, gateway])
async def test_a_lost_create_reply_is_found_on_its_familys_route(make: Any) -> None:
    """A text-to-video whose reply was lost is found again on the text2video routes (by its
    stamped external id, or, unstamped through a gateway, in its family's list): one task."""
    async with KlingEmulator() as emu, make(emu) as session:
        emu.inject(Fault.reply_lost(), route="create")
        task = await (await session.text_to_video("a storm at sea"))

    assert TaskStatus.SUCCEED == task.status
    assert 1 == len(emu.tasks)
    assert 1 == emu.count("create")
    assert emu.count("query", family="text2video") + emu.count("list", family="text2video") >= 1
    assert 0 == emu.count("query", family="video-extend") + emu.count("list", family="video-extend")


async def test_a_lost_create_reply_in_a_session_with_a_journal_is_found(
    tmp_path: pathlib.Path,
) -> None:
    """The journal (of extends) is no rival of a source create in doubt: it is found again."""
    async with (
        KlingEmulator() as emu,
        gateway(emu, journal=tmp_path / "journal.sqlite3") as session,
    ):
        emu.inject(Fault.reply_lost(), route="create")
        task = await (await session.text_to_video("a storm at sea"))

    assert TaskStatus.SUCCEED == task.status
    assert 1 == len(emu.tasks)


# -- bad input, before any request -------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.text_to_video(""), InvalidArgumentError),
        (lambda s: s.text_to_video("x" * 2501), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", mode="fast"), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", duration="7"), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", aspect_ratio="4:3"), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", cfg_scale=1.5), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", camera_control={"type": "simple"}), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", extra={"prompt": "again"}), InvalidArgumentError),
        (lambda s: s.text_to_video("ok", extra={"f": object()}), InvalidArgumentError),
        (lambda s: s.text_to_video(42), TypeError),
        (lambda s: s.text_to_video("ok", key="k"), ValueError),
        (lambda s: s.image_to_video(), InvalidArgumentError),
        (lambda s: s.image_to_video("data:image/png;base64,AAAA"), InvalidArgumentError),
        (lambda s: s.image_to_video("not an image or a file"), InvalidArgumentError),
        (lambda s: s.image_to_video(pathlib.Path("/no/such/file.png")), InvalidArgumentError),
        (
            lambda s: s.image_to_video(
                "https://e.com/a.png",
                image_tail="https://e.com/b.png",
                camera_control=CameraControl(zoom=2),
            ),
            InvalidArgumentError,
        ),
        (lambda s: s.create_source(TextToVideo(prompt="ok"), key="k"), ValueError),
    ],
)
async def test_bad_input_is_refused_before_any_request(call: Any, error: type[Exception]) -> None:
    """Bad arguments raise a builtin error and send nothing."""
    async with KlingEmulator() as emu, official(emu) as session:
        with pytest.raises(error):
            await call(session)
    assert [] == emu.requests


async def test_an_image_over_10_mb_is_refused_before_any_request(tmp_path: pathlib.Path) -> None:
    """A local image past Kling's 10 MB is refused before it is read into a request."""
    image = tmp_path / "huge.png"
    with image.open("wb") as file:
        file.truncate(10 * 1024 * 1024 + 1)
    async with KlingEmulator() as emu, official(emu) as session:
        with pytest.raises(InvalidArgumentError, match="at most"):
            await session.image_to_video(image)
    assert [] == emu.requests


# -- the typed requests, as values -------------------------------------------------------------


def test_requests_name_their_family_and_serialise_extra_and_camera() -> None:
    """Each request knows its family; camera_control and extra travel as Kling reads them."""
    from kling_async import sansio

    request = TextToVideo(
        prompt="p",
        camera_control={"type": "simple", "config": {"pan": -3}},
        watermark=True,
        extra={"new_option": [1, 2]},
    )
    sent = sansio.create_request("https://h/kling", request)
    assert ("POST", "/v1/videos/text2video") == (sent.method, sent.path)
    assert {
        "prompt": "p",
        "model_name": "kling-v1",
        "camera_control": {"type": "simple", "config": {"pan": -3}},
        "watermark_info": {"enabled": True},
        "new_option": [1, 2],
    } == json.loads(sent.body or b"")
    assert TaskFamily.IMAGE2VIDEO == ImageToVideo(image="https://e.com/a.png").family
    preset = CameraControl.of({"type": "down_back"})
    assert preset is not None
    assert {"type": "down_back"} == json.loads(
        sansio.create_request("", TextToVideo(prompt="p", camera_control=preset)).body or b""
    )["camera_control"]


@pytest.mark.parametrize("family", list(TaskFamily))
def test_each_familys_routes_are_one_path(family: TaskFamily) -> None:
    """Create, query and list of a family share ``/v1/videos/<family>`` below the base URL."""
    from kling_async import sansio

    base = "https://gw.example.com/kling"
    path = f"/v1/videos/{family.value}"
    assert base + path + "/a%2Fb" == sansio.query_request(base, "a/b", family).url
    assert base + path + "?pageNum=2&pageSize=30" == sansio.list_request(base, 2, 30, family).url


def test_a_large_base64_image_shows_by_length_in_repr() -> None:
    """A base64 image is megabytes: the repr shows its length, not its data."""
    data = base64.b64encode(PNG * 100).decode()
    assert f"<base64, {len(data)} chars>" in repr(ImageToVideo(image=data))
