"""The one cattrs converter: Kling's JSON in, models out (and the create body out).

Hooks carry the wire's quirks (docs/concepts.md, "Tasks and statuses"): Unix milliseconds
become aware UTC datetimes, string durations (``"5.1"``) become floats, unknown statuses are
kept, ``null`` where an object or list belongs reads as empty, unknown keys are ignored, and
the renames (``task_status`` -> ``status``, ``task_id`` <- ``parent_task_id``) live here, not
in dict code.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import attrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from .models import ExtendRequest, Task, TaskInfo, TaskResult, TaskStatus, Video

__all__ = ["Envelope", "converter"]


@attrs.frozen(kw_only=True)
class Envelope:
    """Every reply's wrapper: ``code`` 0 means success (a gateway may send a string code)."""

    code: int | str | None = None
    message: str = ""
    request_id: str | None = None
    data: Any = None


converter = make_converter()


def _text(value: Any, _: type) -> str:
    """Opaque ids and messages: a string, a number spelled as one, or ``null`` as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _required_id(value: Any, _: type) -> str:
    text = _text(value, str)
    if not text:
        raise ValueError("expected a non-empty id")
    return text


def _optional_text(value: Any, _: type) -> str | None:
    return _text(value, str) or None


def _loose_text(value: Any, _: type) -> str | None:
    """An optional informative field (``final_unit_deduction``): text, a number as text, or
    None for anything else, so that a server's odd spelling never fails a whole reply."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    """A JSON number or a numeric string (durations come as ``"5.1"``); empty means unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TypeError("expected a number, got bool")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _duration(value: Any, _: type) -> float | None:
    return _number(value)


def _timestamp(value: Any, _: type) -> dt.datetime | None:
    """A task time (``created_at``, ``updated_at``: Unix milliseconds) as an aware UTC datetime."""
    if type(value) is int and value > 100_000_000_000:  # the usual case: Unix milliseconds
        return dt.datetime.fromtimestamp(value / 1000, tz=dt.timezone.utc)
    stamp = _number(value)
    if not stamp:
        return None
    if stamp < 1e11:  # a gateway that sends seconds: 1e11 ms is 1973, 1e11 s is year 5138
        stamp *= 1000
    return dt.datetime.fromtimestamp(stamp / 1000, tz=dt.timezone.utc)


_KNOWN_STATUSES = {status.value: status for status in TaskStatus}


def _status(value: Any, _: type) -> TaskStatus:
    known = _KNOWN_STATUSES.get(value) if type(value) is str else None
    if known is not None:
        return known
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a status string, got {value!r}")
    return TaskStatus(value)


def _or_empty(cls: type, inner: Any, empty: Any) -> Any:
    """``null`` (or ``[]``, as some PHP gateways send) where an object belongs reads as empty."""

    def structure(value: Any, _: type) -> Any:
        if value is None or value == []:
            return empty
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        return inner(value, cls)

    return structure


def _parent_video(value: Any, _: type) -> Video | None:
    if value is None or value == {} or value == []:
        return None
    return _structure_video(value, Video)


def _videos(value: Any, _: type) -> tuple[Video, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError(f"expected a list of videos, got {type(value).__name__}")
    return tuple(_structure_video(item, Video) for item in value)


_structure_video = make_dict_structure_fn(
    Video,
    converter,
    id=override(struct_hook=_required_id),
    url=override(struct_hook=_text),
    duration=override(struct_hook=_duration),
    watermark_url=override(struct_hook=_optional_text),
)
converter.register_structure_hook(Video, _structure_video)
converter.register_structure_hook(
    TaskInfo,
    _or_empty(
        TaskInfo,
        make_dict_structure_fn(
            TaskInfo,
            converter,
            parent_video=override(struct_hook=_parent_video),
            external_task_id=override(struct_hook=_optional_text),
        ),
        TaskInfo(),
    ),
)
converter.register_structure_hook(
    TaskResult,
    _or_empty(
        TaskResult,
        make_dict_structure_fn(TaskResult, converter, videos=override(struct_hook=_videos)),
        TaskResult(),
    ),
)
converter.register_structure_hook(
    Task,
    make_dict_structure_fn(
        Task,
        converter,
        task_id=override(struct_hook=_required_id),
        status=override(rename="task_status", struct_hook=_status),
        status_message=override(rename="task_status_msg", struct_hook=_text),
        created_at=override(struct_hook=_timestamp),
        updated_at=override(struct_hook=_timestamp),
        info=override(rename="task_info"),
        result=override(rename="task_result"),
        final_unit_deduction=override(struct_hook=_loose_text),
    ),
)
converter.register_structure_hook(
    Envelope,
    make_dict_structure_fn(
        Envelope,
        converter,
        code=override(struct_hook=lambda value, _: value),  # int or string; sansio decides
        message=override(struct_hook=_text),
        request_id=override(struct_hook=_optional_text),
        data=override(struct_hook=lambda value, _: value),
    ),
)
converter.register_unstructure_hook(
    ExtendRequest,
    make_dict_unstructure_fn(
        ExtendRequest,
        converter,
        _cattrs_omit_if_default=True,
        parent_task_id=override(
            rename="task_id"
        ),  # the parent task id that some gateways require goes as "task_id"
        # Kling reads the watermark request as watermark_info: {"enabled": bool}
        watermark=override(
            rename="watermark_info", unstruct_hook=lambda enabled: {"enabled": enabled}
        ),
    ),
)
