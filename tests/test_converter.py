"""Specification of decoding Kling's JSON into models, and of the create body sent back."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import pathlib
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kling_async import (
    Cost,
    ExtendRequest,
    ResponseDecodeError,
    Task,
    TaskInfo,
    TaskResult,
    TaskStatus,
    Video,
    sansio,
)

SAMPLES = pathlib.Path(__file__).parent / "samples"
UTC = dt.timezone.utc
NOW = dt.datetime(2025, 11, 6, 9, 10, tzinfo=UTC)
BASE = "https://gateway.example.com/kling"

TASK_ID = "815336423632572487"
CREATED = dt.datetime(2025, 11, 6, 9, 4, 30, 395000, tzinfo=UTC)
PARENT = Video(
    id="827942411241803822",
    url="https://cdn.klingai.com/bs2/upload-kling-api/4852135741/text2video/"
    "CjikY2gHPbcAAAAABI5n9g-0_raw_video_1.mp4",
    duration=5.1,
)
RESULT = Video(
    id="815336512879099961",
    url="https://cdn.klingai.com/bs2/upload-kling-api/4852135741/extendvideo/"
    "CjjdLmgHPbcAAAAAAYEfqA-0_raw_video_1.mp4",
    duration=10.1,
)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def ok(body: bytes | str) -> sansio.HTTPResponse:
    if isinstance(body, str):
        body = body.encode()
    return sansio.HTTPResponse(status=200, body=body, headers={"Content-Type": "application/json"})


def task_reply(**fields: Any) -> sansio.HTTPResponse:
    """A query reply whose task has ``fields`` on top of a minimal valid task."""
    data = {"task_id": TASK_ID, "task_status": "processing", **fields}
    return ok(json.dumps({"code": 0, "message": "SUCCEED", "request_id": "r", "data": data}))


def parse(**fields: Any) -> Task:
    return sansio.parse_task(task_reply(**fields), NOW)


# --- recorded samples -------------------------------------------------------------------------


def test_seed_create_reply() -> None:
    """The seed's create reply is a submitted task with its id and millisecond times."""
    expected = Task(
        task_id=TASK_ID, status=TaskStatus.SUBMITTED, created_at=CREATED, updated_at=CREATED
    )
    assert expected == sansio.parse_created(ok(sample("create_reply.json")), NOW)


def test_query_submitted() -> None:
    """A submitted task carries its source video and no result yet."""
    expected = Task(
        task_id=TASK_ID,
        status=TaskStatus.SUBMITTED,
        created_at=CREATED,
        updated_at=CREATED,
        info=TaskInfo(parent_video=PARENT),
    )
    assert expected == sansio.parse_task(ok(sample("query_submitted.json")), NOW)


def test_query_processing() -> None:
    """A processing task is not done and has a later ``updated_at``."""
    task = sansio.parse_task(ok(sample("query_processing.json")), NOW)
    expected = (
        TaskStatus.PROCESSING,
        False,
        dt.datetime(2025, 11, 6, 9, 5, 1, 522000, tzinfo=UTC),
        PARENT,
        None,
    )
    assert expected == (task.status, task.done, task.updated_at, task.parent_video, task.video)


def test_query_succeed_with_a_result_video() -> None:
    """A succeeded task has its result video with the string duration read as seconds."""
    expected = Task(
        task_id=TASK_ID,
        status=TaskStatus.SUCCEED,
        created_at=CREATED,
        updated_at=dt.datetime(2025, 11, 6, 9, 8, 9, 31000, tzinfo=UTC),
        info=TaskInfo(parent_video=PARENT),
        result=TaskResult(videos=(RESULT,)),
    )
    assert expected == sansio.parse_task(ok(sample("query_succeed.json")), NOW)


def test_query_failed_with_a_reason_and_empty_objects() -> None:
    """A failed task is a successful query: the reason is kept, empty objects read as empty."""
    expected = Task(
        task_id="815336634187657305",
        status=TaskStatus.FAILED,
        status_message="Failure to pass the risk control system",
        created_at=dt.datetime(2025, 11, 6, 9, 5, 12, 4000, tzinfo=UTC),
        updated_at=dt.datetime(2025, 11, 6, 9, 5, 35, 817000, tzinfo=UTC),
    )
    assert expected == sansio.parse_task(ok(sample("query_failed.json")), NOW)


def test_query_unknown_status_is_kept() -> None:
    """An undocumented status (``queueing``) is kept as an unknown, unfinished status."""
    task = sansio.parse_task(ok(sample("query_unknown_status.json")), NOW)
    expected = ("queueing", False, False, PARENT)
    assert expected == (task.status.value, task.status.known, task.done, task.parent_video)


def test_query_with_newer_fields_reads_watermark_url_and_deduction() -> None:
    """2026 fields: ``watermark_url`` and the deductions (the cost) are read, the rest ignored."""
    watermarked = attrs.evolve(
        RESULT,
        watermark_url="https://cdn.klingai.com/bs2/upload-kling-api/4852135741/extendvideo/"
        "CjjdLmgHPbcAAAAAAYEfqA-0_watermark_video_1.mp4",
    )
    expected = Task(
        task_id=TASK_ID,
        status=TaskStatus.SUCCEED,
        created_at=CREATED,
        updated_at=dt.datetime(2025, 11, 6, 9, 8, 9, 31000, tzinfo=UTC),
        info=TaskInfo(parent_video=PARENT, external_task_id="order-2025-11-06-0042"),
        result=TaskResult(videos=(watermarked,)),
        final_unit_deduction="2",
        cost=Cost(
            units=decimal.Decimal("2"),
            cash=decimal.Decimal("0.56"),
            list_price=decimal.Decimal("0.70"),
        ),
    )
    assert expected == sansio.parse_task(ok(sample("query_newer_fields.json")), NOW)


def test_list_page_newest_first() -> None:
    """A list page decodes every task, in the server's order (newest first)."""
    tasks = sansio.parse_task_list(ok(sample("list_page.json")), NOW)
    expected = [
        ("815336701936853042", TaskStatus.PROCESSING, RESULT, None),
        ("815336634187657305", TaskStatus.FAILED, None, None),
        (TASK_ID, TaskStatus.SUCCEED, PARENT, RESULT),
    ]
    assert expected == [(t.task_id, t.status, t.parent_video, t.video) for t in tasks]


def test_list_page_keeps_failure_reasons() -> None:
    """Tasks in a list carry the same detail as a query: the failed one says why."""
    tasks = sansio.parse_task_list(ok(sample("list_page.json")), NOW)
    assert ["", "Failure to pass the risk control system", ""] == [t.status_message for t in tasks]


def test_empty_list_page() -> None:
    """A page with no tasks is an empty list."""
    body = b'{"code":0,"message":"SUCCEED","request_id":"r","data":[]}'
    assert [] == sansio.parse_task_list(ok(body), NOW)


# --- wire quirks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "seconds"), [("5.1", 5.1), ("10", 10.0), (" 4.9 ", 4.9), (5.1, 5.1), (5, 5.0)]
)
def test_duration_string_or_number_becomes_float_seconds(wire: Any, seconds: float) -> None:
    """``duration`` is a string of seconds on the wire (a number tolerated) and a float here."""
    task = parse(task_result={"videos": [{"id": "v", "url": "u", "duration": wire}]})
    assert task.video is not None
    assert seconds == task.video.duration


@pytest.mark.parametrize("wire", ["", None])
def test_empty_duration_is_unknown(wire: Any) -> None:
    """An empty or null duration reads as unknown (``None``)."""
    task = parse(task_result={"videos": [{"id": "v", "url": "u", "duration": wire}]})
    assert task.video is not None
    assert task.video.duration is None


def test_missing_video_url_and_duration_default() -> None:
    """A video with only an id has an empty URL and no duration."""
    assert Video(id="v") == parse(task_info={"parent_video": {"id": "v"}}).parent_video


def test_millisecond_timestamps_become_aware_utc_datetimes() -> None:
    """``created_at``/``updated_at`` in Unix milliseconds become aware UTC datetimes."""
    task = parse(created_at=1762419870395, updated_at="1762419901522")
    expected = (CREATED, dt.datetime(2025, 11, 6, 9, 5, 1, 522000, tzinfo=UTC), UTC)
    assert expected == (task.created_at, task.updated_at, task.created_at.tzinfo)  # type: ignore[union-attr]


def test_second_timestamps_from_a_gateway_are_read_as_seconds() -> None:
    """A gateway that sends Unix seconds gets the same instant, not a date in 1970."""
    assert dt.datetime(2025, 11, 6, 9, 4, 30, tzinfo=UTC) == parse(created_at=1762419870).created_at


@pytest.mark.parametrize("wire", [None, 0, ""])
def test_absent_timestamps_are_none(wire: Any) -> None:
    """``null``, 0 and an empty string mean the time is unknown."""
    assert parse(created_at=wire).created_at is None


def test_missing_optional_fields_are_empty() -> None:
    """A task with only an id and a status decodes with empty defaults."""
    expected = Task(task_id=TASK_ID, status=TaskStatus.PROCESSING)
    assert expected == parse()


@pytest.mark.parametrize("empty", [None, [], {}])
def test_null_or_empty_list_where_objects_belong(empty: Any) -> None:
    """``null`` or ``[]`` (PHP gateways) for task_info/task_result reads as empty."""
    expected = Task(task_id=TASK_ID, status=TaskStatus.PROCESSING)
    assert expected == parse(task_info=empty, task_result=empty)


@pytest.mark.parametrize("empty", [None, [], {}])
def test_null_or_empty_parent_video_is_none(empty: Any) -> None:
    """An empty ``parent_video`` means the server did not say which video was extended."""
    assert parse(task_info={"parent_video": empty}).parent_video is None


def test_null_videos_list_is_empty() -> None:
    """``videos: null`` reads as no videos."""
    assert () == parse(task_result={"videos": None}).videos


def test_null_status_message_is_empty() -> None:
    """``task_status_msg: null`` reads as an empty message."""
    assert "" == parse(task_status_msg=None).status_message


def test_numeric_ids_become_strings() -> None:
    """Ids sent as JSON numbers are kept as exact decimal strings (task ids are opaque)."""
    task = parse(
        task_id=815336423632572487,
        task_info={"parent_video": {"id": 827942411241803822, "url": "u"}},
        task_result={"videos": [{"id": 815336512879099961, "url": "u"}]},
    )
    expected = ("815336423632572487", "827942411241803822", "815336512879099961")
    assert expected == (task.task_id, task.parent_video.id, task.video.id)  # type: ignore[union-attr]


def test_opaque_string_task_ids_are_kept() -> None:
    """Non-numeric task ids (``CjikY2gHPbcAAAAABI5n9g``-like) are kept verbatim."""
    assert "CjikY2gHPbcAAAAABI5n9g" == parse(task_id="CjikY2gHPbcAAAAABI5n9g").task_id


def test_unknown_fields_are_ignored_everywhere() -> None:
    """Unknown keys in the envelope, the task, task_info, task_result and videos are ignored."""
    body = {
        "code": 0,
        "message": "SUCCEED",
        "request_id": "r",
        "trace": {"span": 1},
        "data": {
            "task_id": TASK_ID,
            "task_status": "succeed",
            "model_name": "kling-v2-1",
            "task_info": {"parent_video": {"id": "p", "url": "u", "fps": 24}, "mode": "pro"},
            "task_result": {"videos": [{"id": "v", "url": "u", "cover": "c"}], "images": []},
        },
    }
    task = sansio.parse_task(ok(json.dumps(body)), NOW)
    expected = Task(
        task_id=TASK_ID,
        status=TaskStatus.SUCCEED,
        info=TaskInfo(parent_video=Video(id="p", url="u")),
        result=TaskResult(videos=(Video(id="v", url="u"),)),
    )
    assert expected == task


def test_external_task_id_is_read_from_task_info() -> None:
    """The caller's ``external_task_id`` comes back inside ``task_info``."""
    assert "order-42" == parse(task_info={"external_task_id": "order-42"}).external_task_id


@pytest.mark.parametrize(
    "fields",
    [
        {"task_id": ""},
        {"task_id": None},
        {"task_id": 1.5},
        {"task_status": ""},
        {"task_status": None},
        {"task_status": 3},
        {"created_at": "yesterday"},
        {"created_at": True},
        {"task_info": "p"},
        {"task_result": {"videos": {"id": "v"}}},
        {"task_result": {"videos": [{"url": "u"}]}},
        {"task_result": {"videos": [{"id": "v", "duration": "five"}]}},
        {"task_result": {"videos": [{"id": "v", "duration": "nan"}]}},
    ],
    ids=repr,
)
def test_wrong_shapes_are_decode_errors(fields: dict[str, Any]) -> None:
    """A task of the wrong shape is a JSON-shaped ResponseDecodeError, never a raw exception."""
    with pytest.raises(ResponseDecodeError) as info:
        parse(**fields)
    assert (True, 200, "r") == (info.value.is_json, info.value.status, info.value.request_id)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_any_duration_string_round_trips(seconds: float) -> None:
    """Whatever number of seconds the server spells as a string comes back as that float."""
    task = parse(task_result={"videos": [{"id": "v", "duration": repr(seconds)}]})
    assert task.video is not None
    assert seconds == task.video.duration


@given(st.integers(min_value=100_000_000_000, max_value=4_102_444_800_000))
def test_any_millisecond_timestamp_is_exact(ms: int) -> None:
    """Every millisecond timestamp from 1973 to 2100 decodes to the exact instant."""
    expected = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)
    assert expected == parse(created_at=ms).created_at


# --- the create body ------------------------------------------------------------------------


def test_create_request_line_and_headers() -> None:
    """A create is ``POST {base}/v1/videos/video-extend`` with Accept and Content-Type JSON."""
    request = sansio.create_request(BASE, ExtendRequest(video_id="v"))
    expected = (
        "POST",
        "https://gateway.example.com/kling/v1/videos/video-extend",
        "/v1/videos/video-extend",
        (("Accept", "application/json"), ("Content-Type", "application/json")),
    )
    assert expected == (request.method, request.url, request.path, request.headers)


def test_create_body_of_the_seed_example() -> None:
    """The seed's example body is sent as is, non-ASCII prompt included, as UTF-8 JSON."""
    request = sansio.create_request(
        BASE, ExtendRequest(video_id="827942411241803822", prompt="场景放大")
    )
    assert request.body is not None
    assert {"video_id": "827942411241803822", "prompt": "场景放大"} == json.loads(request.body)
    assert "场景放大" in request.body.decode("utf-8")


def test_create_body_omits_fields_left_as_none() -> None:
    """Fields the caller did not set are not sent at all (not as ``null``)."""
    request = sansio.create_request(BASE, ExtendRequest(video_id="v"))
    assert request.body is not None
    assert {"video_id": "v"} == json.loads(request.body)


def test_create_body_with_every_field() -> None:
    """Every field is sent under its wire name; ``parent_task_id`` goes out as ``task_id``."""
    request = sansio.create_request(
        BASE,
        ExtendRequest(
            video_id="827942411241803822",
            prompt="zoom out",
            negative_prompt="blur",
            cfg_scale=0.3,
            callback_url="https://example.com/cb",
            parent_task_id="815336423632572487",
            external_task_id="order-42",
        ),
    )
    expected = {
        "video_id": "827942411241803822",
        "prompt": "zoom out",
        "negative_prompt": "blur",
        "cfg_scale": 0.3,
        "callback_url": "https://example.com/cb",
        "task_id": "815336423632572487",
        "external_task_id": "order-42",
    }
    assert request.body is not None
    assert expected == json.loads(request.body)


def test_create_body_keeps_zero_cfg_scale() -> None:
    """``cfg_scale=0`` is a value, not an absent field: it is sent."""
    request = sansio.create_request(BASE, ExtendRequest(video_id="v", cfg_scale=0))
    assert request.body is not None
    assert {"video_id": "v", "cfg_scale": 0} == json.loads(request.body)


_ids = st.text(min_size=1).filter(str.strip)
_texts = st.none() | st.text(max_size=2500)


@settings(deadline=None)  # 2500-character prompts: generation time varies on CI
@given(
    video_id=_ids,
    prompt=_texts,
    negative_prompt=_texts,
    cfg_scale=st.none() | st.floats(min_value=0, max_value=1),
    callback_url=st.none() | st.sampled_from(["https://example.com/cb", "http://127.0.0.1:9/x"]),
    parent_task_id=st.none() | _ids,
    external_task_id=st.none() | _ids,
)
def test_any_valid_request_round_trips_through_the_create_body(
    video_id: str,
    prompt: str | None,
    negative_prompt: str | None,
    cfg_scale: float | None,
    callback_url: str | None,
    parent_task_id: str | None,
    external_task_id: str | None,
) -> None:
    """The create body holds exactly the fields that were set, with their exact values."""
    request = ExtendRequest(
        video_id=video_id,
        prompt=prompt,
        negative_prompt=negative_prompt,
        cfg_scale=cfg_scale,
        callback_url=callback_url,
        parent_task_id=parent_task_id,
        external_task_id=external_task_id,
    )
    wire = {
        "video_id": video_id,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "cfg_scale": cfg_scale,
        "callback_url": callback_url,
        "task_id": parent_task_id,
        "external_task_id": external_task_id,
    }
    expected = {key: value for key, value in wire.items() if value is not None}
    body = sansio.create_request(BASE, request).body
    assert body is not None
    assert expected == json.loads(body)
