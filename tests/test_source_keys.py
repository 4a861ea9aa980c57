"""Journal keys for source creates (text-to-video, image-to-video): one task per key, as for
an extend, across calls, sessions, crashes and both journals (SQLite and the fleet's Redis).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import pathlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import pytest

from kling_async import (
    CameraControl,
    EntryState,
    ExtendRequest,
    ImageToVideo,
    KlingSession,
    PollPolicy,
    SQLiteJournal,
    TaskFamily,
    TaskHandle,
    TextToVideo,
)
from kling_async._fleet import Fleet
from kling_async._journal import ClaimOutcome
from kling_async._journal_requests import (
    canonical,
    decode_request,
    fingerprint,
    images_left_out,
)
from kling_async._redis_journal import RedisJournal
from kling_async.testing import KlingEmulator

from .helpers import official
from .test_cli import run

pytestmark = pytest.mark.anyio

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
PROMPT = "a red fox in snow"
# The default retry policy's shape with a 1.5 s window (docs/concepts.md, "How an unknown
# outcome is reconciled"): look-ups as after a real crash, only shorter.
SHORT = {"poll_policy": PollPolicy.instant(), "connect_timeout": 0.5, "read_timeout": 0.5}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def creates(emu: KlingEmulator, family: str) -> list[Any]:
    """The bodies of the creates ``emu`` received on ``family``'s route."""
    return [r.json for r in emu.requests if r.route == "create" and r.family == family]


def crash_session(emu: KlingEmulator, **options: Any) -> KlingSession:
    """An access-key session (stamping) with the default retry policy, as the crash tests."""
    return KlingSession(
        access_key=emu.access_key,
        secret_key=emu.secret_key,
        base_url=emu.base_url,
        **{**SHORT, **options},
    )


def gateway_session(emu: KlingEmulator, **options: Any) -> KlingSession:
    """A gateway session (no stamping: a look-up reads the list) with the default retries."""
    return KlingSession(emu.api_key, base_url=emu.gateway_url, **{**SHORT, **options})


async def left_in_doubt(
    path: pathlib.Path,
    key: str,
    request: TextToVideo | ImageToVideo,
    *,
    stamp: str | None = None,
    sent_at: dt.datetime | None = None,
) -> None:
    """Journal ``key`` as a process killed mid-create leaves it: sent, unanswered, unowned."""
    async with SQLiteJournal(path) as journal:
        await journal.claim(key, request, now=sent_at or _now(), stamp=stamp)
        await journal.mark_sending(key, sent_at or _now(), sent_uncertainty=0.01)


# -- the request codec (pure) ------------------------------------------------------------------


def test_an_extend_s_canonical_form_and_fingerprint_are_those_of_version_0_2() -> None:
    """Journals written by 0.2 still match: an extend's text and hash are unchanged."""
    request = ExtendRequest(
        video_id="vid-1",
        prompt="a wave breaks",
        cfg_scale=1,
        watermark=True,
        external_task_id="ext-1",
    )
    expected = (
        '{"cfg_scale":1.0,"external_task_id":"ext-1","prompt":"a wave breaks",'
        '"video_id":"vid-1","watermark":true}'
    )
    assert expected == canonical(request)
    assert "cfc349ceacb9dac1fbebba5d016dcd926b7ca22602698718fd3b7f16406f2b0a" == fingerprint(
        request
    )
    assert request == decode_request(canonical(request))


def test_a_source_request_reads_back_as_its_own_type() -> None:
    """The family is in the text; camera control, extra and URL images come back equal."""
    text = TextToVideo(
        prompt=PROMPT,
        mode="pro",
        duration=10,
        cfg_scale=1,
        camera_control={"type": "simple", "config": {"zoom": 5}},
        extra={"seed": 7, "nested": {"a": [1, None]}},
    )
    image = ImageToVideo(
        image="https://example.com/first.png",
        camera_control=CameraControl(type="down_back"),
        prompt="it walks",
    )

    assert '"family":"text2video"' in canonical(text)
    assert text == decode_request(canonical(text))
    assert image == decode_request(canonical(image))
    assert fingerprint(text) != fingerprint(
        TextToVideo(prompt=PROMPT, mode="pro", duration=10, cfg_scale=1)
    )


def test_a_base64_image_is_kept_as_its_digest_and_cannot_be_sent_from_it() -> None:
    """The journal keeps sha256 of a base64 image, not the image; the read-back request has
    the same identity, and says it cannot be sent."""
    request = ImageToVideo(image=PNG, image_tail="https://example.com/last.png", prompt="p")
    text = canonical(request)
    stored = decode_request(text)

    assert PNG not in text
    assert isinstance(stored, ImageToVideo)
    assert "sha256:" + hashlib.sha256(PNG.encode()).hexdigest() == stored.image
    assert "https://example.com/last.png" == stored.image_tail
    assert (fingerprint(request), False, True) == (
        fingerprint(stored),
        images_left_out(request),
        images_left_out(stored),
    )
    assert "sha256:" in repr(stored)


def test_an_unknown_family_in_a_record_is_not_read_as_anything() -> None:
    """A record of a family this version does not know raises; it is never guessed."""
    with pytest.raises(ValueError, match="family"):
        decode_request('{"family":"lip-sync","prompt":"x"}')


# -- keyed source creates on the emulator -------------------------------------------------------


@pytest.mark.parametrize("family", ["text2video", "image2video"])
async def test_a_key_makes_one_source_task_across_calls_concurrency_and_sessions(
    emu: KlingEmulator, tmp_path: pathlib.Path, family: str
) -> None:
    """Repeated, concurrent and later-session calls with one key make one task, whose
    handles are of the right family."""
    path = tmp_path / "j.sqlite3"

    async def make(session: KlingSession) -> TaskHandle:
        if family == "text2video":
            return await session.text_to_video(PROMPT, duration=5, key="row-1")
        return await session.image_to_video(PNG, prompt=PROMPT, key="row-1")

    handles: list[TaskHandle] = []

    async def collect(session: KlingSession) -> None:
        handles.append(await make(session))

    async with official(emu, journal=path) as first, official(emu, journal=path) as second:
        handles.append(await make(first))
        handles.append(await make(first))
        async with anyio.create_task_group() as group:
            for session in (first, second, first, second):
                group.start_soon(collect, session)
    async with official(emu, journal=path) as later:
        handles.append(await make(later))
        task = await handles[-1]

    assert 1 == len({handle.task_id for handle in handles})
    assert {TaskFamily(family)} == {handle.family for handle in handles}
    assert 1 == len(creates(emu, family))
    assert 1 == emu.count("create")
    assert emu.tasks[task.task_id].family == family


async def test_a_source_key_reused_for_another_request_is_a_value_error(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Another prompt, another image or another family under one key: ValueError, unsent."""
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        await session.text_to_video(PROMPT, key="row-1")
        await session.image_to_video(PNG, key="row-2")
        await session.extend("vid-1", key="row-3")
        with pytest.raises(ValueError, match=r"row-1.*text-to-video"):
            await session.text_to_video("another prompt", key="row-1")
        with pytest.raises(ValueError, match="row-1"):
            await session.image_to_video(PNG, prompt=PROMPT, key="row-1")
        with pytest.raises(ValueError, match=r"row-2.*image-to-video"):
            await session.image_to_video(PNG[:-8] + "AAAAAAAA", key="row-2")
        with pytest.raises(ValueError, match="row-3"):
            await session.text_to_video(PROMPT, key="row-3")
    assert 3 == emu.count("create")


async def test_a_source_create_left_in_doubt_is_found_by_its_external_id_not_resent(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A text-to-video whose reply was lost (the process died) is found on its own query
    route by its stamp; the same call after the crash returns that task and sends nothing."""
    path = tmp_path / "j.sqlite3"
    await left_in_doubt(path, "row-1", TextToVideo(prompt=PROMPT), stamp="ext-row-1")
    async with official(emu) as other:  # the lost create did reach the server
        made = await other.text_to_video(PROMPT, external_task_id="ext-row-1")
    sent = emu.count("create")

    async with crash_session(emu, journal=path) as session:
        handle = await session.text_to_video(PROMPT, key="row-1")
    async with SQLiteJournal(path) as journal:
        entry = await journal.get("row-1")

    assert (made.task_id, TaskFamily.TEXT2VIDEO) == (handle.task_id, handle.family)
    assert sent == emu.count("create")
    assert 0 == emu.count("query", family="video-extend")
    assert entry is not None
    assert (EntryState.CREATED, made.task_id) == (entry.state, entry.task_id)


async def test_a_source_create_in_doubt_is_found_in_its_family_s_list_by_resume(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Without an external id (a gateway), resume() looks an image-to-video in doubt up in
    the image2video list: found there, never in the text2video one, and not resent."""
    path = tmp_path / "j.sqlite3"
    await left_in_doubt(path, "row-1", ImageToVideo(image=PNG, prompt=PROMPT))
    async with gateway_session(emu) as other:
        made = await other.image_to_video(PNG, prompt=PROMPT)
        await other.text_to_video(PROMPT)  # another family's task of the same moment
    sent = emu.count("create")

    async with gateway_session(emu, journal=path) as session:
        with anyio.fail_after(30):
            handles = await session.resume()

    assert [(made.task_id, TaskFamily.IMAGE2VIDEO)] == [(h.task_id, h.family) for h in handles]
    assert sent == emu.count("create")
    assert emu.count("list", family="image2video") >= 1
    assert 0 == emu.count("list", family="text2video")


async def test_source_creates_of_two_families_in_doubt_are_no_rivals_of_each_other(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """An image-to-video in doubt takes the one task of its family's list although two
    text-to-videos are in doubt at the same moment; those two, each of which could have made
    the one text-to-video, share none (no external ids: a gateway)."""
    path = tmp_path / "j.sqlite3"
    await left_in_doubt(path, "t", TextToVideo(prompt=PROMPT))
    await left_in_doubt(path, "i", ImageToVideo(image=PNG))
    await left_in_doubt(path, "t2", TextToVideo(prompt="another"))
    async with gateway_session(emu) as other:
        text = await other.text_to_video(PROMPT)
        image = await other.image_to_video(PNG)

    async with gateway_session(emu, journal=path) as session:
        with anyio.fail_after(30):
            handles = await session.resume()

    # "t" and "t2" could each have made the one text-to-video: neither takes it.
    assert [(image.task_id, TaskFamily.IMAGE2VIDEO)] == [(h.task_id, h.family) for h in handles]
    assert text.task_id not in {h.task_id for h in handles}
    assert 2 == emu.count("create")


async def test_an_image_create_proved_absent_is_resent_only_with_the_caller_s_image(
    emu: KlingEmulator, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal keeps a base64 image's digest: resume() finds the create absent and says
    it cannot send it; the call with the same image and key then sends it, once, with the
    journaled external id."""
    path = tmp_path / "j.sqlite3"
    long_ago = _now() - dt.timedelta(seconds=200)  # past its window
    request = ImageToVideo(image=PNG, prompt=PROMPT)
    await left_in_doubt(path, "row-1", request, stamp="ext-img", sent_at=long_ago)

    async with official(emu, journal=path) as session:
        with caplog.at_level(logging.WARNING, logger="kling_async"):
            resumed = await session.resume()
        async with SQLiteJournal(path) as journal:
            between = await journal.get("row-1")
        sent = emu.count("create")
        handle = await session.image_to_video(PNG, prompt=PROMPT, key="row-1")
        again = await session.image_to_video(PNG, prompt=PROMPT, key="row-1")

    assert ([], 0) == (resumed, sent)
    assert "same images and key" in caplog.text
    assert between is not None
    assert EntryState.INTENT == between.state  # proved absent: nothing left the machine
    [body] = creates(emu, "image2video")
    assert PNG == body["image"]
    assert handle.task_id == again.task_id
    assert 1 == emu.count("create")


async def test_an_image_create_in_doubt_called_again_is_resent_with_the_caller_s_image(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The same call after a crash looks the create up first; proved absent, it is sent
    with the caller's image and the journaled external id (the same request)."""
    path = tmp_path / "j.sqlite3"
    long_ago = _now() - dt.timedelta(seconds=200)  # past its window
    request = ImageToVideo(image=PNG, prompt=PROMPT)
    await left_in_doubt(path, "row-1", request, stamp="ext-img", sent_at=long_ago)

    async with official(emu, journal=path) as session:
        handle = await session.image_to_video(PNG, prompt=PROMPT, key="row-1")

    [body] = creates(emu, "image2video")
    assert (PNG, "ext-img") == (body["image"], body["external_task_id"])
    assert TaskFamily.IMAGE2VIDEO == handle.family
    assert emu.count("query", family="image2video") >= 1  # looked up before it was sent


async def test_resume_returns_source_handles_of_their_family_and_settle_takes_one(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """resume() gives each unfinished key's handle on its family's routes; settle() of a
    source key queries the task on its family's route."""
    path = tmp_path / "j.sqlite3"
    async with official(emu, journal=path) as session:
        text = await session.text_to_video(PROMPT, key="t")
        image = await session.image_to_video("https://example.com/a.png", key="i")
        extend = await session.extend("vid-1", key="e")
    await left_in_doubt(path, "d", TextToVideo(prompt="lost"), stamp="ext-d")
    async with official(emu) as other:
        lost = await other.text_to_video("lost", external_task_id="ext-d")

    async with official(emu, journal=path) as session:
        settled = await session.settle("d", lost.task_id)
        handles = await session.resume()
        done = [await handle for handle in handles]

    expected = {
        (text.task_id, TaskFamily.TEXT2VIDEO),
        (image.task_id, TaskFamily.IMAGE2VIDEO),
        (extend.task_id, TaskFamily.EXTEND),
        (lost.task_id, TaskFamily.TEXT2VIDEO),
    }
    assert expected == {(handle.task_id, handle.family) for handle in handles}
    assert TaskFamily.TEXT2VIDEO == settled.family
    assert 4 == len(done)


_V1_SCHEMA = """
CREATE TABLE creates (
    key TEXT PRIMARY KEY NOT NULL, fingerprint TEXT NOT NULL, request TEXT NOT NULL,
    stamped INTEGER NOT NULL, external_task_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('intent', 'sending', 'created', 'refused', 'finished')),
    owner TEXT, claimed_at TEXT NOT NULL, sent_at TEXT, task_id TEXT, task TEXT, status TEXT,
    refusal_code INTEGER, refusal_reason TEXT
) WITHOUT ROWID;
"""


async def test_a_journal_written_for_extends_only_takes_source_keys_too(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A journal of the extend-only schema (version 1, upgraded on open) keeps its extend's
    key matching, and takes source keys beside it."""
    path = tmp_path / "old.sqlite3"
    async with official(emu) as other:
        old = await other.extend("vid-1")
    recorded = json.dumps({"video_id": "vid-1"}, sort_keys=True, separators=(",", ":"))
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    db.execute(f"PRAGMA application_id = {0x4B4C4A31}")  # "KLJ1": a kling_async journal
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO creates (key, fingerprint, request, stamped, state, claimed_at, task_id)"
        " VALUES (?, ?, ?, 0, 'created', '2026-01-02T03:04:05.000000+00:00', ?)",
        ("row-old", hashlib.sha256(recorded.encode()).hexdigest(), recorded, old.task_id),
    )
    db.commit()
    db.close()
    sent = emu.count("create")

    async with official(emu, journal=path) as session:
        again = await session.extend("vid-1", key="row-old")
        made = await session.text_to_video(PROMPT, key="row-new")
        handles = await session.resume()

    assert old.task_id == again.task_id
    assert sent + 1 == emu.count("create")
    assert {(old.task_id, TaskFamily.EXTEND), (made.task_id, TaskFamily.TEXT2VIDEO)} == {
        (handle.task_id, handle.family) for handle in handles
    }


def test_the_journal_listing_shows_a_source_key_by_family_and_prompt(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """``kling-async journal show`` names a source create in doubt by its family and prompt
    (it has no video id), in text and in JSON."""
    path = tmp_path / "j.sqlite3"
    anyio.run(left_in_doubt, path, "k1", TextToVideo(prompt=PROMPT))

    status, out, _ = run(capsys, "journal", "show", str(path))
    json_status, json_out, _ = run(capsys, "journal", "show", str(path), "--json")

    assert (0, 0) == (status, json_status)
    assert f"k1  in doubt  text-to-video '{PROMPT}', sent " in out
    [key] = json.loads(json_out)["keys"]
    assert (None, "text2video", "in_doubt") == (key["video_id"], key["family"], key["state"])


# -- the fleet's Redis journal ------------------------------------------------------------------


@pytest.fixture
async def redis_journals(redis_url: str) -> AsyncIterator[tuple[RedisJournal, RedisJournal]]:
    """Two Redis journal instances on one fleet account (two processes, as owners go)."""
    fleets = [Fleet(redis_url, account="source-keys-test") for _ in range(2)]
    for fleet in fleets:
        await fleet.open()
    try:
        async with RedisJournal(fleets[0]) as first, RedisJournal(fleets[1]) as second:
            yield first, second
    finally:
        for fleet in fleets:
            await fleet.aclose()


async def test_the_redis_journal_records_and_reads_source_requests_by_family(
    redis_journals: tuple[RedisJournal, RedisJournal],
) -> None:
    """Redis keeps a source request with its family (a base64 image as its digest): read
    back typed, matched by identity, refused for another request, and its doubts are the
    source ones ("" video), never an extend's."""
    journal, other = redis_journals
    text = TextToVideo(prompt=PROMPT, camera_control=CameraControl(zoom=3), extra={"seed": 1})
    image = ImageToVideo(image=PNG, prompt=PROMPT)
    await journal.claim("t", text, now=_now(), stamp="ext-t")
    await journal.mark_sending("t", _now())
    await journal.claim("i", image, now=_now())
    await journal.mark_sending("i", _now())
    await journal.mark_created("i", "task-i")
    await journal.claim("e", ExtendRequest(video_id="vid-1"), now=_now())
    await journal.mark_sending("e", _now())

    stored_text, stored_image = await other.get("t"), await other.get("i")
    again = await other.claim("i", image, now=_now())
    with pytest.raises(ValueError, match=r"key .i. .*image-to-video"):
        await other.claim("i", ImageToVideo(image=PNG, prompt="other"), now=_now())
    sources = await other.doubts("")
    extends = await other.doubts("vid-1")

    assert stored_text is not None
    assert stored_image is not None
    assert (text, "ext-t") == (
        attrs.evolve(stored_text.request, external_task_id=None),
        stored_text.external_task_id,
    )
    assert isinstance(stored_image.request, ImageToVideo)
    assert images_left_out(stored_image.request)
    assert (ClaimOutcome.EXISTING, "task-i") == (again.outcome, again.task_id)
    assert ["t"] == [entry.key for entry in sources]
    assert ["e"] == [entry.key for entry in extends]
