"""Specification of the models: task statuses, task accessors and ExtendRequest validation."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_async import (
    ExtendRequest,
    InvalidArgumentError,
    Task,
    TaskInfo,
    TaskResult,
    TaskStatus,
    Video,
)

PARENT = Video(id="827942411241803822", url="https://cdn.example/parent.mp4", duration=5.1)
RESULT = Video(id="815336512879099961", url="https://cdn.example/result.mp4", duration=10.1)


# --- TaskStatus -----------------------------------------------------------------------------


def test_task_status_has_the_four_documented_members() -> None:
    """The enum's members are exactly api.md's four statuses, spelled as on the wire."""
    expected = ["submitted", "processing", "succeed", "failed"]
    assert expected == [status.value for status in TaskStatus]


@pytest.mark.parametrize(
    ("value", "member"),
    [
        ("submitted", TaskStatus.SUBMITTED),
        ("processing", TaskStatus.PROCESSING),
        ("succeed", TaskStatus.SUCCEED),
        ("failed", TaskStatus.FAILED),
    ],
)
def test_task_status_looks_up_documented_values_as_members(value: str, member: TaskStatus) -> None:
    """A documented wire value gives the enum member itself."""
    assert TaskStatus(value) is member


@pytest.mark.parametrize(
    ("status", "known", "done"),
    [
        (TaskStatus.SUBMITTED, True, False),
        (TaskStatus.PROCESSING, True, False),
        (TaskStatus.SUCCEED, True, True),
        (TaskStatus.FAILED, True, True),
    ],
)
def test_task_status_known_and_done_for_members(
    status: TaskStatus, known: bool, done: bool
) -> None:
    """Every member is known; only ``succeed`` and ``failed`` are done."""
    assert (known, done) == (status.known, status.done)


def test_unknown_task_status_is_kept() -> None:
    """A status the server invents keeps its value (api.md: "keep it")."""
    status = TaskStatus("queueing")
    assert isinstance(status, TaskStatus)
    assert status.value == "queueing"
    assert status == "queueing"


def test_unknown_task_status_is_neither_known_nor_done() -> None:
    """An unknown status is "not finished, unknown": ``known`` and ``done`` are False."""
    status = TaskStatus("queueing")
    assert (False, False) == (status.known, status.done)


def test_unknown_task_status_is_not_a_member() -> None:
    """An unknown status is not added to the enum's members."""
    TaskStatus("queueing")
    assert "queueing" not in [status.value for status in TaskStatus]


@given(
    st.text(min_size=1).filter(lambda s: s not in {"submitted", "processing", "succeed", "failed"})
)
def test_any_unknown_status_string_is_kept_and_not_done(value: str) -> None:
    """Whatever string the server sends as a status is kept, unknown and not done."""
    status = TaskStatus(value)
    assert (value, False, False) == (status.value, status.known, status.done)


def test_task_status_rejects_non_strings() -> None:
    """Only strings can be statuses; anything else is a ValueError as for any enum."""
    with pytest.raises(ValueError, match="not a valid TaskStatus"):
        TaskStatus(5)  # type: ignore[arg-type]  # wrong on purpose


def test_task_status_repr_of_member() -> None:
    """A member's repr names it and shows the wire value."""
    assert "<TaskStatus.SUCCEED: 'succeed'>" == repr(TaskStatus.SUCCEED)


def test_task_status_repr_of_unknown() -> None:
    """An unknown status's repr says UNKNOWN and shows the value the server sent."""
    assert "<TaskStatus.UNKNOWN: 'queueing'>" == repr(TaskStatus("queueing"))


@pytest.mark.parametrize("value", ["submitted", "processing", "succeed", "failed", "queueing"])
def test_task_status_str_and_format_are_the_wire_value(value: str) -> None:
    """``str()`` and f-strings give the bare wire value, known or not."""
    status = TaskStatus(value)
    assert (value, value) == (str(status), f"{status}")


# --- Task -----------------------------------------------------------------------------------


def test_task_defaults_are_empty() -> None:
    """A task with only an id and a status has no message, times, source or result."""
    task = Task(task_id="1", status=TaskStatus.SUBMITTED)
    expected = ("", None, None, None, None, (), None)
    actual = (
        task.status_message,
        task.created_at,
        task.updated_at,
        task.parent_video,
        task.external_task_id,
        task.videos,
        task.video,
    )
    assert expected == actual


def test_task_convenience_properties_read_info_and_result() -> None:
    """``videos``, ``video``, ``parent_video`` and ``external_task_id`` read the nested models."""
    task = Task(
        task_id="1",
        status=TaskStatus.SUCCEED,
        info=TaskInfo(parent_video=PARENT, external_task_id="order-42"),
        result=TaskResult(videos=(RESULT, PARENT)),
    )
    expected = ((RESULT, PARENT), RESULT, PARENT, "order-42")
    assert expected == (task.videos, task.video, task.parent_video, task.external_task_id)


@pytest.mark.parametrize(
    ("status", "done"),
    [
        (TaskStatus.SUBMITTED, False),
        (TaskStatus.PROCESSING, False),
        (TaskStatus.SUCCEED, True),
        (TaskStatus.FAILED, True),
        (TaskStatus("queueing"), False),
    ],
)
def test_task_done_follows_its_status(status: TaskStatus, done: bool) -> None:
    """``Task.done`` is the status's ``done``."""
    assert done == Task(task_id="1", status=status).done


def test_task_is_frozen() -> None:
    """Tasks are immutable values."""
    task = Task(task_id="1", status=TaskStatus.SUBMITTED)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.task_id = "2"  # type: ignore[misc]  # frozen on purpose


def test_task_is_keyword_only() -> None:
    """Models take keyword arguments only."""
    with pytest.raises(TypeError):
        Task("1", TaskStatus.SUBMITTED)  # type: ignore[misc]  # positional on purpose


def test_task_equality_is_by_value() -> None:
    """Two tasks with the same fields are equal."""
    when = dt.datetime(2025, 11, 6, tzinfo=dt.timezone.utc)
    left = Task(task_id="1", status=TaskStatus.SUCCEED, created_at=when)
    right = Task(task_id="1", status=TaskStatus("succeed"), created_at=when)
    assert left == right


# --- ExtendRequest: valid values --------------------------------------------------------------


def test_extend_request_defaults() -> None:
    """Only ``video_id`` is required; every other field defaults to None (not sent)."""
    request = ExtendRequest(video_id="827942411241803822")
    expected = (None, None, None, None, None, None)
    actual = (
        request.prompt,
        request.negative_prompt,
        request.cfg_scale,
        request.callback_url,
        request.parent_task_id,
        request.external_task_id,
    )
    assert expected == actual


def test_extend_request_accepts_every_field() -> None:
    """A request with every field set keeps each value as given."""
    request = ExtendRequest(
        video_id="827942411241803822",
        prompt="场景放大",
        negative_prompt="blur",
        cfg_scale=0.5,
        callback_url="https://example.com/kling/callback",
        parent_task_id="815336423632572487",
        external_task_id="order-42",
    )
    assert "场景放大" == request.prompt
    assert 0.5 == request.cfg_scale
    assert "815336423632572487" == request.parent_task_id


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_extend_request_accepts_2500_characters(field: str) -> None:
    """Exactly 2500 characters is allowed (api.md: "at most 2500 characters")."""
    text = "字" * 2500
    request = ExtendRequest(video_id="v", **{field: text})
    assert text == getattr(request, field)


@pytest.mark.parametrize("cfg_scale", [0, 0.0, 0.5, 1, 1.0])
def test_extend_request_accepts_cfg_scale_in_range(cfg_scale: float) -> None:
    """``cfg_scale`` may be any number from 0 to 1, bounds included, int or float."""
    assert cfg_scale == ExtendRequest(video_id="v", cfg_scale=cfg_scale).cfg_scale


@pytest.mark.parametrize(
    "url", ["https://example.com/cb", "http://127.0.0.1:8080/cb?x=1", "HTTPS://Example.com"]
)
def test_extend_request_accepts_http_callback_urls(url: str) -> None:
    """``callback_url`` may be any http or https URL with a host."""
    assert url == ExtendRequest(video_id="v", callback_url=url).callback_url


def test_extend_request_is_frozen() -> None:
    """A built request cannot be changed past its validators."""
    request = ExtendRequest(video_id="v")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.video_id = ""  # type: ignore[misc]  # frozen on purpose


# --- ExtendRequest: invalid values --------------------------------------------------------------


def _field_of_error(**kwargs: Any) -> str:
    kwargs.setdefault("video_id", "827942411241803822")
    with pytest.raises(InvalidArgumentError) as info:
        ExtendRequest(**kwargs)
    return info.value.field


@pytest.mark.parametrize("video_id", ["", " ", "\t\n"])
def test_extend_request_rejects_empty_video_id(video_id: str) -> None:
    """An empty or blank ``video_id`` is refused before any I/O, naming the field."""
    assert "video_id" == _field_of_error(video_id=video_id)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_extend_request_rejects_2501_characters(field: str) -> None:
    """One character over 2500 is refused, naming the field."""
    assert field == _field_of_error(**{field: "a" * 2501})


@pytest.mark.parametrize("cfg_scale", [-0.01, 1.01, -1, 2, math.nan, math.inf, -math.inf])
def test_extend_request_rejects_cfg_scale_out_of_range(cfg_scale: float) -> None:
    """``cfg_scale`` outside 0..1, NaN and infinities are refused, naming the field."""
    assert "cfg_scale" == _field_of_error(cfg_scale=cfg_scale)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/cb", "example.com/cb", "/cb", "http://", "javascript:alert(1)", ""],
)
def test_extend_request_rejects_non_http_callback_url(url: str) -> None:
    """A ``callback_url`` that is not an http(s) URL with a host is refused, naming the field."""
    assert "callback_url" == _field_of_error(callback_url=url)


@pytest.mark.parametrize("field", ["parent_task_id", "external_task_id"])
@pytest.mark.parametrize("value", ["", "   "])
def test_extend_request_rejects_empty_optional_ids(field: str, value: str) -> None:
    """An optional id that is given must not be empty or blank."""
    assert field == _field_of_error(**{field: value})


def test_invalid_argument_error_is_a_value_error_with_the_field_in_its_message() -> None:
    """InvalidArgumentError is a ValueError whose message starts with the field name."""
    with pytest.raises(ValueError, match=r"^cfg_scale: must be between 0 and 1"):
        ExtendRequest(video_id="v", cfg_scale=1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"video_id": None},
        {"video_id": 827942411241803822},
        {"video_id": "v", "prompt": 5},
        {"video_id": "v", "negative_prompt": b"blur"},
        {"video_id": "v", "cfg_scale": True},
        {"video_id": "v", "cfg_scale": False},
        {"video_id": "v", "cfg_scale": "0.5"},
        {"video_id": "v", "callback_url": b"https://example.com"},
        {"video_id": "v", "parent_task_id": 815336423632572487},
        {"video_id": "v", "external_task_id": 42},
    ],
    ids=lambda kwargs: "-".join(f"{k}={type(v).__name__}" for k, v in kwargs.items()),
)
def test_extend_request_rejects_wrong_types_with_type_error(kwargs: dict[str, Any]) -> None:
    """A value of the wrong type (a bool for cfg_scale included) is a TypeError."""
    with pytest.raises(TypeError):
        ExtendRequest(**kwargs)


def test_extend_request_requires_video_id() -> None:
    """Leaving out ``video_id`` is a TypeError, like any missing argument."""
    with pytest.raises(TypeError):
        ExtendRequest()  # type: ignore[call-arg]  # missing on purpose


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not 0 <= x <= 1))
def test_extend_request_rejects_every_cfg_scale_outside_0_to_1(cfg_scale: float) -> None:
    """No finite number outside 0..1 passes as ``cfg_scale``."""
    assert "cfg_scale" == _field_of_error(cfg_scale=cfg_scale)
