"""The one cattrs converter: Kling's JSON in, models out (and the create body out).

Hooks carry the wire's quirks (docs/concepts.md, "Tasks and statuses"): Unix milliseconds
become aware UTC datetimes, string durations (``"5.1"``) become floats, unknown statuses are
kept, ``null`` where an object or list belongs reads as empty, unknown keys are ignored, and
the renames (``task_status`` -> ``status``, ``task_id`` <- ``parent_task_id``) live here, not
in dict code. A task's cost is read from two wire fields into one `Cost` of exact decimals
(docs/concepts.md, "What a task cost"); `load_json` keeps JSON fractions as decimals.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from typing import Any

import attrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from ._source_requests import CAMERA_AXES, CameraControl, ImageToVideo, TextToVideo
from .models import Cost, ExtendRequest, Task, TaskInfo, TaskResult, TaskStatus, Video

__all__ = ["Envelope", "converter", "cost_of", "load_json", "wire_decimal"]

# JSON fractions read as text into exact decimals, never through a binary float.
_DECODER = json.JSONDecoder(parse_float=decimal.Decimal)
# The largest amount read (below 10**18) and the finest (18 places): past them a value is
# not money but junk, and sums of them stay exact in `_spending`'s context.
_MAX_ADJUSTED = 17
_MIN_EXPONENT = -18
_MAX_DECIMAL_TEXT = 64
_COST_KEY = "\x00cost"  # where `_structure_task` hands the cost it read to the generated code


def load_json(text: str | bytes) -> Any:
    """JSON as `json.loads` reads it, but fractions (``0.35``) as exact `decimal.Decimal`."""
    return _DECODER.decode(text if isinstance(text, str) else text.decode())


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
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    return None


def wire_decimal(value: Any) -> decimal.Decimal | None:
    """An amount from the wire as an exact decimal, or None when it is not one.

    A decimal string (``"0.35"``), a JSON integer or a fraction `load_json` read; a float
    another JSON reader made is read through its shortest spelling (``repr``). Anything
    else counts as absent, never as an error: a word, NaN, infinity, a negative amount, an
    object or a list, more than 18 places or 10**18 and beyond (docs/concepts.md, "What a
    task cost").
    """
    if isinstance(value, decimal.Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > _MAX_DECIMAL_TEXT:
            return None
        try:
            number = decimal.Decimal(text)
        except decimal.InvalidOperation:
            return None
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -(10**18) < value < 10**18:
            return None
        number = decimal.Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = decimal.Decimal(repr(value))
    else:
        return None
    if not number.is_finite():
        return None
    if number.is_signed():
        if number:
            return None  # a deduction is never negative
        number = number.copy_abs()  # -0 is 0
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite decimal's exponent is a number
    if not number:
        return number if exponent >= _MIN_EXPONENT else decimal.Decimal(0)
    if number.adjusted() > _MAX_ADJUSTED or exponent < _MIN_EXPONENT:
        return None
    return number


def cost_of(data: dict[str, Any]) -> Cost | None:
    """The cost a task object states (``final_unit_deduction``, ``final_balance_deduction``'s
    ``quota`` and ``list_price``), or None when it states none that reads as an amount."""
    units = wire_decimal(data.get("final_unit_deduction"))
    balance = data.get("final_balance_deduction")
    cash = list_price = None
    if isinstance(balance, dict):
        cash = wire_decimal(balance.get("quota"))
        list_price = wire_decimal(balance.get("list_price"))
    if units is None and cash is None and list_price is None:
        return None
    return Cost(units=units, cash=cash, list_price=list_price)


def _number(value: Any) -> float | None:
    """A JSON number or a numeric string (durations come as ``"5.1"``); empty means unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TypeError("expected a number, got bool")
    if isinstance(value, (int, float, decimal.Decimal)):
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
_structure_task_fields = make_dict_structure_fn(
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
    # Two wire fields make one Cost: `_structure_task` reads them and passes it under a key
    # no reply uses (cheaper than making the task again with attrs.evolve, on every reply).
    cost=override(rename=_COST_KEY, struct_hook=lambda value, _: value),
)


def _structure_task(value: Any, cls: type) -> Task:
    """A task object; its `Cost` read from the two wire fields that carry it, when present."""
    if isinstance(value, dict) and (
        "final_unit_deduction" in value or "final_balance_deduction" in value
    ):
        cost = cost_of(value)
        value = {**value, _COST_KEY: cost}
    task: Task = _structure_task_fields(value, cls)
    return task


converter.register_structure_hook(Task, _structure_task)
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


def _camera_control(control: CameraControl) -> dict[str, Any]:
    """Kling's ``{"type": ..., "config": {...}}``; only ``simple`` carries a config."""
    if control.type != "simple":
        return {"type": control.type}
    config = {axis: getattr(control, axis) for axis in CAMERA_AXES}
    return {"type": control.type, "config": {k: v for k, v in config.items() if v is not None}}


converter.register_unstructure_hook(CameraControl, _camera_control)


def _source_hook(cls: type[TextToVideo] | type[ImageToVideo]) -> Any:
    """A source create's body: its set fields, ``watermark`` as ``watermark_info``, then
    ``extra``'s options as they are (they may not repeat a typed field's name)."""
    fields = make_dict_unstructure_fn(
        cls,
        converter,
        _cattrs_omit_if_default=True,
        watermark=override(
            rename="watermark_info", unstruct_hook=lambda enabled: {"enabled": enabled}
        ),
        extra=override(omit=True),
        model_name=override(omit_if_default=False),  # sent always: gateways route on it
    )

    def unstructure(request: TextToVideo | ImageToVideo) -> dict[str, Any]:
        body: dict[str, Any] = fields(request)
        body.update(request.extra)
        return body

    return unstructure


converter.register_unstructure_hook(TextToVideo, _source_hook(TextToVideo))
converter.register_unstructure_hook(ImageToVideo, _source_hook(ImageToVideo))
