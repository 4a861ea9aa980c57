"""Source videos Kling will not extend: retired models, expired videos, the 3-minute limit."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest

from kling_async import (
    CallbackReceiver,
    ExtendRequest,
    InvalidArgumentError,
    InvalidRequestError,
    KlingSession,
    NotFoundError,
    SourceVideoError,
    SourceVideoInvalidError,
    SourceVideoNotFoundError,
    SourceVideoReason,
    Task,
    TaskInfo,
    TaskResult,
    TaskStatus,
    Video,
)
from kling_async._source_video import (
    KnownDurations,
    source_video_error,
    source_video_reason,
    too_long,
)
from kling_async.errors import ContentPolicyError
from kling_async.testing import Fault, KlingEmulator

from .helpers import gateway, official

Style = Callable[..., KlingSession]  # official() or gateway(): how the session reaches Kling

pytestmark = pytest.mark.anyio

RETIRED = SourceVideoReason.MODEL_RETIRED
EXPIRED = SourceVideoReason.VIDEO_EXPIRED
TOO_LONG = SourceVideoReason.TOO_LONG
NOT_FOUND = SourceVideoReason.NOT_FOUND


# ------------------------------------------------------------------ the pure decisions


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (404, 1203, "video v1 was made by model kling-v1, which is discontinued", RETIRED),
        (404, 1203, "The model of this video has been retired", RETIRED),
        (404, 1203, "该视频的模型已下线", RETIRED),
        (
            404,
            1203,
            "video v1 has expired: videos are deleted 30 days after they are made",
            EXPIRED,
        ),
        (404, 1203, "video has been deleted", EXPIRED),
        (400, 1201, "video v1 is too long to extend: its duration is 178.0s", TOO_LONG),
        (400, 1201, "the extended video may not exceed 3 minutes", TOO_LONG),
        (400, 1200, "视频时长超过限制", TOO_LONG),
        (404, 1203, "video v1 does not exist", NOT_FOUND),
        (404, 1203, "Requested resource does not exist", NOT_FOUND),  # unknown words
        (404, 1203, "", NOT_FOUND),
        (200, 1203, "something new", NOT_FOUND),  # a code inside an HTTP 200 still counts
        (404, None, "video v1 has been deleted", EXPIRED),  # a gateway lost the code
        (404, None, "video v1 not found", NOT_FOUND),
        (400, None, "video v1 is too long: duration over the limit", TOO_LONG),
    ],
)
def test_the_reason_is_read_from_status_code_and_message(
    status: int, code: int | None, message: str, expected: SourceVideoReason
) -> None:
    """Each refusal of a source video is told apart by its words; a bare 1203 is 'not found'."""
    assert expected == source_video_reason(status, code, message)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, 1201, "prompt must be at most 2500 characters"),  # too long, but not the video
        (400, 1201, "cfg_scale must be between 0 and 1"),
        (400, 1201, "external_task_id already exists"),
        (400, 1201, "video_id is required"),
        (400, 1301, "the model flagged this video"),  # another code: content policy
        (429, 1303, "parallel tasks exceed the limit"),
        (404, None, "Not Found"),  # a route the gateway does not know
        (404, None, "Invalid URL (POST /kling/v1/videos/video-extend)"),  # and another
        (400, None, "当前分组 default 下对于模型 kling-v1 无可用渠道"),  # no channel for it
        (400, 1201, "model kling-v1 does not support watermark_info"),
        (400, 1201, "duration must be 5 or 10"),
        (500, None, "video expired"),  # a server error is never a refusal
    ],
)
def test_other_refusals_are_not_about_the_source_video(
    status: int, code: int | None, message: str
) -> None:
    """Refusals of something else than the source video get no reason."""
    assert source_video_reason(status, code, message) is None


@pytest.mark.parametrize("reason", list(SourceVideoReason))
def test_the_sdks_own_words_read_back_as_the_same_reason(reason: SourceVideoReason) -> None:
    """A journal keeps the text of a refusal: the words of each reason read back as it."""
    cls = SourceVideoInvalidError if reason is TOO_LONG else SourceVideoNotFoundError
    code = 1201 if reason is TOO_LONG else 1203
    error = cls("Error", video_id="v1", reason=reason, status=400, code=code)

    assert reason == source_video_reason(0 if code == 1203 else 400, code, str(error))


def test_the_error_class_stays_a_subclass_of_todays() -> None:
    """A 404 refusal is a NotFoundError, a 400 one an InvalidRequestError; others are not
    source-video errors."""
    gone = source_video_error(
        NotFoundError, "video v1 has expired", video_id="v1", status=404, code=1203
    )
    long = source_video_error(
        InvalidRequestError, "video v1 duration too long", video_id="v1", status=400, code=1201
    )
    other = source_video_error(
        ContentPolicyError, "video v1 has expired", video_id="v1", status=400, code=1301
    )

    assert isinstance(gone, SourceVideoNotFoundError)
    assert isinstance(gone, NotFoundError)
    assert isinstance(long, SourceVideoInvalidError)
    assert isinstance(long, InvalidRequestError)
    assert (EXPIRED, TOO_LONG) == (gone.reason, long.reason)
    assert other is None


@pytest.mark.parametrize(
    ("duration", "refused"),
    [(None, False), (5.0, False), (176.0, False), (176.1, True), (181.0, True)],
)
def test_an_extend_that_would_pass_three_minutes_is_refused(
    duration: float | None, refused: bool
) -> None:
    """duration + 4 s (the least an extend adds) over 180 s is refused; one that may fit
    is left to Kling, and an unknown duration is never refused."""
    assert refused == (too_long("v1", duration) is not None)


def test_the_refusal_names_the_video_its_length_and_the_limit() -> None:
    """The InvalidArgumentError names the field, the video, its known length and 180 s."""
    error = too_long("v-long", 176.4, index=3)

    assert error is not None
    assert "video_id" == error.field
    assert "requests[3]" in str(error)
    assert "'v-long'" in str(error)
    assert "176.4 s" in str(error)
    assert "180 s" in str(error)


def _task(task_id: str, parent: tuple[str, float | None], *results: tuple[str, float]) -> Task:
    return Task(
        task_id=task_id,
        status=TaskStatus.SUCCEED,
        info=TaskInfo(parent_video=Video(id=parent[0], duration=parent[1])),
        result=TaskResult(videos=tuple(Video(id=i, duration=d) for i, d in results)),
    )


def test_known_durations_keep_sources_and_results_up_to_a_bound() -> None:
    """Sources and results are remembered; past the bound the oldest seen are forgotten."""
    known = KnownDurations(limit=3)
    known.saw(_task("t1", ("a", 5.0), ("b", 9.1)))
    known.saw(_task("t2", ("c", None), ("d", 13.2)))
    known.saw(_task("t3", ("e", 20.0)))

    assert (None, 9.1, None, 13.2, 20.0) == tuple(known.get(v) for v in "abcde")
    assert 3 == len(known)


# ------------------------------------------------------------------ refusals over HTTP


async def _refused(session: KlingSession, video_id: str) -> SourceVideoError:
    with pytest.raises(SourceVideoError) as caught:
        async with session:
            await session.extend(video_id)
    return caught.value


@pytest.mark.parametrize("style", [official, gateway])
async def test_a_video_of_a_retired_model_is_refused_in_words(
    emu: KlingEmulator, style: Style
) -> None:
    """Kling's 404 / 1203 for a retired model: a NotFoundError that says so and names the video."""
    emu.retire_model("old-v", model="kling-v1")

    error = await _refused(style(emu), "old-v")

    assert isinstance(error, NotFoundError)
    assert (RETIRED, "old-v", 404, 1203) == (error.reason, error.video_id, error.status, error.code)
    assert error.request_id
    assert "'old-v'" in str(error)
    assert "retired" in str(error)
    assert "kling-v1" in str(error)
    assert 1 == emu.count("create")


@pytest.mark.parametrize("style", [official, gateway])
async def test_an_expired_video_is_refused_in_words(emu: KlingEmulator, style: Style) -> None:
    """An expired video: 404 / 1203, reason video_expired, the 30 days named."""
    emu.expire_video("month-old")

    error = await _refused(style(emu), "month-old")

    assert isinstance(error, SourceVideoNotFoundError)
    assert (EXPIRED, "month-old") == (error.reason, error.video_id)
    assert "30 days" in str(error)


@pytest.mark.parametrize("style", [official, gateway])
async def test_a_video_kling_does_not_know_keeps_the_generic_reason(
    emu: KlingEmulator, style: Style
) -> None:
    """A 1203 without a known reason is 'not found', and still names the video."""
    emu.forget_video("nobody")

    error = await _refused(style(emu), "nobody")

    assert (NOT_FOUND, "nobody", 1203) == (error.reason, error.video_id, error.code)
    assert "'nobody'" in str(error)


@pytest.mark.parametrize("style", [official, gateway])
async def test_a_video_too_long_for_kling_is_refused_when_its_length_is_unknown(
    emu: KlingEmulator, style: Style
) -> None:
    """The session does not know the length: it sends, and Kling's 400 / 1201 says why."""
    emu.set_video_duration("long-v", 178.0)

    error = await _refused(style(emu), "long-v")

    assert isinstance(error, SourceVideoInvalidError)
    assert isinstance(error, InvalidRequestError)
    assert (TOO_LONG, "long-v", 400, 1201) == (
        error.reason,
        error.video_id,
        error.status,
        error.code,
    )
    assert "3 minutes" in str(error)
    assert 1 == emu.count("create")


async def test_a_gateway_envelope_with_klings_reply_inside_is_read_as_kling(
    emu: KlingEmulator,
) -> None:
    """A new-api style string code with Kling's JSON in the message: Kling's code decides."""
    inner = {"code": 1203, "message": "model kling-v1 is discontinued", "request_id": "r-9"}
    emu.inject(
        Fault.gateway(status=404, code="upstream_error", message=json.dumps(inner)),
        route="create",
    )

    error = await _refused(gateway(emu), "old-v")

    assert isinstance(error, SourceVideoNotFoundError)
    assert (RETIRED, 1203, "upstream_error", "r-9") == (
        error.reason,
        error.code,
        error.gateway_code,
        error.request_id,
    )


async def test_a_gateway_that_lost_the_code_is_read_by_status_and_words(
    emu: KlingEmulator,
) -> None:
    """Without Kling's code the status picks the class and the words the reason."""
    emu.inject(
        Fault.gateway(status=404, code="not_found", message="video old-v has been deleted"),
        route="create",
    )

    error = await _refused(gateway(emu), "old-v")

    assert isinstance(error, SourceVideoNotFoundError)
    assert (EXPIRED, None, "not_found") == (error.reason, error.code, error.gateway_code)


async def test_a_refusal_about_something_else_stays_what_it_was(emu: KlingEmulator) -> None:
    """A 1201 about the prompt is a plain InvalidRequestError, not a source-video error."""
    emu.inject(Fault.business(1201, status=400, message="prompt is not allowed"), route="create")
    async with official(emu) as session:
        with pytest.raises(InvalidRequestError) as caught:
            await session.extend("v1")
    assert not isinstance(caught.value, SourceVideoError)


# ------------------------------------------------------------------ the 3-minute pre-check


async def _extend_and_wait(session: KlingSession, video_id: str) -> Video:
    task = await (await session.extend(video_id)).wait()
    assert task.video is not None
    return task.video


async def test_an_extend_chain_is_stopped_before_it_passes_three_minutes(
    emu: KlingEmulator,
) -> None:
    """Each result's known length counts: the extend that would pass 180 s is never sent."""
    emu.set_video_duration("start", 160.0)
    lengths = []
    async with official(emu) as session:
        video_id = "start"
        for _ in range(4):
            video = await _extend_and_wait(session, video_id)
            lengths.append(video.duration)
            video_id = video.id
        creates = emu.count("create")
        with pytest.raises(InvalidArgumentError) as caught:
            await session.extend(video_id)

    assert [164.1, 168.2, 172.3, 176.4] == lengths
    assert 4 == creates == emu.count("create")  # nothing sent for the refused one
    assert "video_id" == caught.value.field
    assert repr(video_id) in str(caught.value)
    assert "176.4 s" in str(caught.value)
    assert "180 s" in str(caught.value)
    # Sent anyway (by a session that does not know the length), Kling refuses it too.
    error = await _refused(official(emu), video_id)
    assert TOO_LONG == error.reason


async def test_an_extend_that_may_fit_is_left_to_kling(emu: KlingEmulator) -> None:
    """171 s, extended by 4.1 s to 175.1 s: 175.1 + 4 may fit in 180 s, so it is sent (and
    the emulator makes a 179.2 s video); the check refuses only what would certainly pass."""
    emu.set_video_duration("start", 171.0)
    async with official(emu) as session:
        video = await _extend_and_wait(session, "start")
        last = await _extend_and_wait(session, video.id)
    assert (175.1, 179.2) == (video.duration, last.duration)
    assert 2 == emu.count("create")


async def test_an_unconfirmed_callback_teaches_no_video_length(emu: KlingEmulator) -> None:
    """A callback hint (not yet confirmed) that names a source video of 999 s does not make
    the session refuse extends of that video: only replies (and signed callbacks) do."""
    receiver = CallbackReceiver("http://127.0.0.1:9/cb")
    async with official(emu, callbacks=receiver) as session:
        handle = await session.extend("vid-1")
        url = emu.tasks[handle.task_id].callback_url or ""
        body = {
            "task_id": handle.task_id,
            "task_status": "processing",
            "task_info": {
                "parent_video": {"id": "victim", "url": "https://x/v", "duration": "999"}
            },
        }
        assert 200 == await receiver.deliver(url.rsplit("/", 1)[1], json.dumps(body).encode())
        await session.extend("victim")
    assert 2 == emu.count("create")


async def test_a_source_whose_known_length_fits_is_sent(emu: KlingEmulator) -> None:
    """175 s + 5 s is exactly 3 minutes: allowed, and known from the task's parent video."""
    emu.set_video_duration("edge", 175.0)
    async with official(emu) as session:
        await _extend_and_wait(session, "edge")  # the session learns the parent's 175.0 s
        await session.extend("edge")
    assert 2 == emu.count("create")


async def test_extend_many_refuses_the_batch_before_sending_any(emu: KlingEmulator) -> None:
    """A batch with an extend that would pass 3 minutes raises before any of its creates."""
    emu.set_video_duration("start", 172.0)
    async with official(emu) as session:
        video = await _extend_and_wait(session, "start")  # 176.1 s, now known
        with pytest.raises(InvalidArgumentError, match=r"requests\[1\]"):
            await session.extend_many(
                [ExtendRequest(video_id="ok"), ExtendRequest(video_id=video.id)]
            )
    assert 1 == emu.count("create")


# ------------------------------------------------------------------ the journal


@pytest.mark.parametrize(
    ("prepare", "reason", "cls"),
    [
        (lambda emu: emu.retire_model("v1"), RETIRED, SourceVideoNotFoundError),
        (lambda emu: emu.expire_video("v1"), EXPIRED, SourceVideoNotFoundError),
        (lambda emu: emu.set_video_duration("v1", 179.0), TOO_LONG, SourceVideoInvalidError),
    ],
)
async def test_a_keyed_refusal_is_remembered_with_its_reason(
    emu: KlingEmulator,
    tmp_path: pathlib.Path,
    prepare: Callable[[KlingEmulator], None],
    reason: SourceVideoReason,
    cls: type[SourceVideoError],
) -> None:
    """The key raises the same source-video error again, from the journal, sending nothing."""
    prepare(emu)
    journal = tmp_path / "j.sqlite3"
    async with official(emu, journal=journal) as session:
        with pytest.raises(cls) as first:
            await session.extend("v1", key="row-1")
    async with official(emu, journal=journal) as later:
        with pytest.raises(cls) as again:
            await later.extend("v1", key="row-1")

    assert 1 == emu.count("create")
    assert (reason, "v1") == (first.value.reason, first.value.video_id)
    assert (reason, "v1", 0) == (again.value.reason, again.value.video_id, again.value.status)
    assert first.value.code == again.value.code


async def test_a_key_over_the_limit_is_refused_before_its_claim(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Known too long and not in the journal: refused before anything is sent or recorded."""
    emu.set_video_duration("start", 172.0)
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        video = await _extend_and_wait(session, "start")  # 176.1 s
        with pytest.raises(InvalidArgumentError):
            await session.extend(video.id, key="row-2")
    assert 1 == emu.count("create")


async def test_the_emulator_refuses_a_length_that_is_not_a_positive_number(
    emu: KlingEmulator,
) -> None:
    """set_video_duration takes a finite number > 0."""
    with pytest.raises(TypeError):
        emu.set_video_duration("v1", "5")  # type: ignore[arg-type]  # wrong on purpose
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="seconds"):
            emu.set_video_duration("v1", bad)


async def test_a_key_the_journal_holds_is_left_to_its_record(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A known-too-long video under a key already recorded: the record answers, not the check."""
    journal = tmp_path / "j.sqlite3"
    emu.set_video_duration("start", 172.0)
    async with official(emu, journal=journal) as knowing:
        video = await _extend_and_wait(knowing, "start")  # 176.1 s, known to this session
        async with official(emu, journal=journal) as other:  # does not know the length
            with pytest.raises(SourceVideoInvalidError):
                await other.extend(video.id, key="row-1")
        with pytest.raises(SourceVideoInvalidError) as again:
            await knowing.extend(video.id, key="row-1")
    assert 2 == emu.count("create")
    assert (TOO_LONG, 0) == (again.value.reason, again.value.status)


async def test_a_remembered_refusal_is_read_from_its_words_not_its_key(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A key that says "model" does not turn an ordinary refusal into a retired model's."""
    emu.inject(Fault.business(1201, status=400, message="callback_url must be https"))
    journal = tmp_path / "j.sqlite3"
    async with official(emu, journal=journal) as session:
        with pytest.raises(InvalidRequestError) as first:
            await session.extend("v1", key="model-3-duration-row-1")
        with pytest.raises(InvalidRequestError) as again:
            await session.extend("v1", key="model-3-duration-row-1")

    assert not isinstance(first.value, SourceVideoError)
    assert not isinstance(again.value, SourceVideoError)
    assert 1 == emu.count("create")


async def test_a_gateway_404_without_a_code_is_remembered_as_a_404(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Its class (a NotFoundError) comes back from the journal too, not an invalid request."""
    emu.inject(Fault.gateway("not_found", status=404, message="video v1 not found"))
    journal = tmp_path / "j.sqlite3"
    async with gateway(emu, journal=journal) as session:
        with pytest.raises(SourceVideoNotFoundError) as first:
            await session.extend("v1", key="row-1")
        with pytest.raises(SourceVideoNotFoundError) as again:
            await session.extend("v1", key="row-1")

    assert (NOT_FOUND, NOT_FOUND) == (first.value.reason, again.value.reason)
    assert 1 == emu.count("create")
