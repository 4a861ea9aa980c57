"""One extend request from what a user typed: ``extend``'s flags or a batch file's row.

Both front ends hand their values to `extend_request`, so a request is checked by one set of
rules with one set of messages; each front end only names the field its own way (a flag, or
``line N: field``). Pure: values in, an `ExtendRequest` or a `RequestProblem` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from .errors import InvalidArgumentError
from .models import ExtendRequest

__all__ = ["FIELDS", "RequestProblem", "extend_arguments", "extend_request"]

# The fields of a request, in the order a batch file's documentation lists them.
FIELDS = (
    "video_id",
    "prompt",
    "negative_prompt",
    "cfg_scale",
    "callback_url",
    "parent_task_id",
    "external_task_id",
    "watermark",
)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class RequestProblem(ValueError):
    """Why the values make no request: ``field`` (None when no one field is to blame) and
    ``why``; `naming` says it with the field named as the front end names it."""

    def __init__(self, field: str | None, why: str, *, joiner: str = ": ") -> None:
        super().__init__(why if field is None else f"{field}{joiner}{why}")
        self.field = field
        self.why = why
        self.joiner = joiner

    def naming(self, name: str) -> str:
        """The message with the field called ``name`` (``--cfg-scale``, ``cfg_scale``)."""
        return self.why if self.field is None else f"{name}{self.joiner}{self.why}"


def _value(name: str, value: object) -> object:
    """A value as ExtendRequest takes it: empty is absent, and text (a CSV cell is all text)
    becomes the number or the truth value the field holds."""
    if value == "" or value is None:
        return None
    if not isinstance(value, str):
        return value
    if name == "cfg_scale":
        try:
            return float(value)
        except ValueError:
            raise RequestProblem(name, f"must be a number, got {value!r}", joiner=" ") from None
    if name == "watermark":
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
        raise RequestProblem(name, f"must be true or false, got {value!r}", joiner=" ")
    return value


def extend_request(values: Mapping[str, object], *, cells: bool = False) -> ExtendRequest:
    """The checked request for ``values`` (field name to value, absent or None: not given);
    raises `RequestProblem` naming the first field at fault.

    With ``cells`` (a batch file's row) an empty value is not given either, and text is read
    as the number or truth value its field holds; flags come typed by argparse, as given.
    """
    fields = {
        name: _value(name, values.get(name)) if cells else values.get(name) for name in FIELDS
    }
    if fields["video_id"] is None:
        raise RequestProblem("video_id", "is missing", joiner=" ")
    try:
        return ExtendRequest(**fields)  # type: ignore[arg-type]  # ExtendRequest checks types
    except InvalidArgumentError as error:
        why = str(error).removeprefix(f"{error.field}: ")
        raise RequestProblem(error.field, why) from None
    except TypeError as error:
        raise RequestProblem(None, str(error)) from None


class ExtendArguments(TypedDict):
    """``KlingSession.extend``'s arguments for one request (``key`` apart)."""

    video_id: str
    prompt: str | None
    negative_prompt: str | None
    cfg_scale: float | None
    callback_url: str | None
    parent_task_id: str | None
    external_task_id: str | None
    watermark: bool | None


def extend_arguments(request: ExtendRequest) -> ExtendArguments:
    """The request as ``KlingSession.extend(**arguments)`` takes it."""
    return ExtendArguments(
        video_id=request.video_id,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        cfg_scale=request.cfg_scale,
        callback_url=request.callback_url,
        parent_task_id=request.parent_task_id,
        external_task_id=request.external_task_id,
        watermark=request.watermark,
    )
