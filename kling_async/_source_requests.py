"""The creates of source videos: text-to-video and image-to-video, validated when built.

Kling's "old design" of these APIs (``model_name`` and friends; docs/concepts.md, "Task
families"): the fields Kling documents are typed and checked here, before any I/O; which
model takes which option is the server's to decide. ``extra`` passes options this SDK does
not know through unchanged, so that a new Kling option needs no release.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

from ._images import image_value
from .errors import InvalidArgumentError
from .models import (
    MAX_PROMPT_LENGTH,
    ExtendRequest,
    TaskFamily,
    check_callback_url,
    check_cfg_scale,
    check_id,
    check_text_field,
    check_watermark,
)

__all__ = [
    "WIRE_NAMES",
    "CameraControl",
    "CreateRequest",
    "ImageToVideo",
    "TextToVideo",
    "source_video_id",
]

MODES = ("std", "pro")
DURATIONS = ("5", "10")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
CAMERA_TYPES = ("simple", "down_back", "forward_up", "right_turn_forward", "left_turn_forward")
CAMERA_AXES = ("horizontal", "vertical", "pan", "tilt", "roll", "zoom")
# Wire names of the typed fields: ``extra`` may not set them a second time.
WIRE_NAMES = frozenset(
    {
        "model_name",
        "model",
        "prompt",
        "negative_prompt",
        "cfg_scale",
        "mode",
        "duration",
        "aspect_ratio",
        "camera_control",
        "callback_url",
        "external_task_id",
        "watermark_info",
        "image",
        "image_tail",
    }
)


def _one_of(field: str, allowed: tuple[str, ...]) -> Any:
    def check(_instance: object, _attribute: object, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise TypeError(f"{field} must be a str, not {type(value).__name__}")
        if value not in allowed:
            raise InvalidArgumentError(field, f"must be one of {', '.join(allowed)}; got {value!r}")

    return check


def _duration(value: object) -> object:
    """``5`` and ``10`` (ints) read as Kling's strings ``"5"`` and ``"10"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _axis(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a camera_control axis must be a number, not {type(value).__name__}")
    return value


@attrs.frozen(kw_only=True)
class CameraControl:
    """A camera movement: one of Kling's preset ``type``\\ s, or ``"simple"`` with exactly one
    non-zero axis in [-10, 10] (``horizontal``, ``vertical``, ``pan``, ``tilt``, ``roll``,
    ``zoom``). Added in version 0.3.
    """

    type: str = attrs.field(
        default="simple", validator=_one_of("camera_control.type", CAMERA_TYPES)
    )
    horizontal: float | None = attrs.field(default=None, converter=_axis)
    vertical: float | None = attrs.field(default=None, converter=_axis)
    pan: float | None = attrs.field(default=None, converter=_axis)
    tilt: float | None = attrs.field(default=None, converter=_axis)
    roll: float | None = attrs.field(default=None, converter=_axis)
    zoom: float | None = attrs.field(default=None, converter=_axis)

    def __attrs_post_init__(self) -> None:
        set_axes = {axis: getattr(self, axis) for axis in CAMERA_AXES}
        set_axes = {axis: value for axis, value in set_axes.items() if value}
        if self.type != "simple":
            if set_axes:
                raise InvalidArgumentError(
                    "camera_control", f"type {self.type!r} takes no config; only 'simple' does"
                )
            return
        if len(set_axes) != 1:
            raise InvalidArgumentError(
                "camera_control",
                "type 'simple' needs exactly one non-zero axis of "
                f"{', '.join(CAMERA_AXES)}; got {len(set_axes)}",
            )
        ((axis, value),) = set_axes.items()
        if not (math.isfinite(value) and -10 <= value <= 10):
            raise InvalidArgumentError(
                "camera_control", f"{axis} must be in [-10, 10], got {value}"
            )

    @classmethod
    def of(cls, value: object) -> CameraControl | None:
        """A `CameraControl`, or one from Kling's JSON shape ``{"type": ..., "config": {...}}``."""
        if value is None or isinstance(value, CameraControl):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"camera_control must be a CameraControl or a mapping, not {type(value).__name__}"
            )
        unknown = set(value) - {"type", "config"}
        config = value.get("config") or {}
        if not isinstance(config, Mapping):
            raise TypeError("camera_control's config must be a mapping")
        unknown |= set(config) - set(CAMERA_AXES)
        if unknown:
            raise InvalidArgumentError(
                "camera_control", f"unknown keys {sorted(map(str, unknown))}"
            )
        return cls(type=value.get("type", "simple"), **config)


def _check_extra(_instance: object, _attribute: object, value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"extra must be a mapping, not {type(value).__name__}")
    for name in value:
        if not isinstance(name, str):
            raise TypeError(f"extra's keys must be str, not {type(name).__name__}")
        if name in WIRE_NAMES:
            raise InvalidArgumentError(
                "extra", f"{name!r} is a typed field: pass it as an argument of its own"
            )
    try:
        json.dumps(dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError("extra", f"must be JSON data: {exc}") from None


def _extra(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else value


def _image(value: object) -> str | None:
    return image_value("image", value)


def _image_tail(value: object) -> str | None:
    return image_value("image_tail", value)


def _camera(value: object) -> CameraControl | None:
    return CameraControl.of(value)


_prompt = check_text_field("prompt", MAX_PROMPT_LENGTH)
_negative_prompt = check_text_field("negative_prompt", MAX_PROMPT_LENGTH)
_model_name = check_id("model_name", required=True)
_external_task_id = check_id("external_task_id", required=False)
_mode = _one_of("mode", MODES)
_durations = _one_of("duration", DURATIONS)


@attrs.frozen(kw_only=True)
class TextToVideo:
    """A text-to-video create (``POST /v1/videos/text2video``): ``prompt`` is required.

    Bad values raise `InvalidArgumentError` (a ``ValueError``) or ``TypeError`` when built,
    before any I/O. ``watermark`` is sent as ``watermark_info``; ``extra`` holds options this
    SDK does not type, sent as they are. Added in version 0.3.
    """

    prompt: str = attrs.field(validator=_prompt)
    model_name: str = attrs.field(default="kling-v1", validator=_model_name)
    negative_prompt: str | None = attrs.field(default=None, validator=_negative_prompt)
    cfg_scale: float | None = attrs.field(default=None, validator=check_cfg_scale)
    mode: str | None = attrs.field(default=None, validator=_mode)
    duration: str | None = attrs.field(default=None, converter=_duration, validator=_durations)
    aspect_ratio: str | None = attrs.field(
        default=None, validator=_one_of("aspect_ratio", ASPECT_RATIOS)
    )
    camera_control: CameraControl | None = attrs.field(default=None, converter=_camera)
    callback_url: str | None = attrs.field(default=None, validator=check_callback_url)
    external_task_id: str | None = attrs.field(default=None, validator=_external_task_id)
    watermark: bool | None = attrs.field(default=None, validator=check_watermark)
    extra: Mapping[str, object] = attrs.field(
        factory=dict, converter=_extra, validator=_check_extra
    )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"prompt must be a str, not {type(self.prompt).__name__}")
        if not self.prompt.strip():
            raise InvalidArgumentError("prompt", "must not be empty for text-to-video")

    @property
    def family(self) -> TaskFamily:
        """The task family whose routes this create goes to."""
        return TaskFamily.TEXT2VIDEO

    @property
    def subject(self) -> str:
        """What the create is of, for errors and logs."""
        return "text-to-video"


@attrs.frozen(kw_only=True)
class ImageToVideo:
    """An image-to-video create (``POST /v1/videos/image2video``) from ``image`` (the first
    frame), ``image_tail`` (the last), or both.

    Each image is an http(s) URL or bare base64 (no ``data:`` prefix); a path (a
    ``pathlib.Path``, or a string naming an existing file) is read and base64-encoded when the
    request is built, and refused past 10 MB. ``image`` with ``image_tail`` excludes
    ``camera_control``. Masks and other options go in ``extra``. Added in version 0.3.
    """

    image: str | None = attrs.field(default=None, converter=_image)
    image_tail: str | None = attrs.field(default=None, converter=_image_tail)
    prompt: str | None = attrs.field(default=None, validator=_prompt)
    model_name: str = attrs.field(default="kling-v1", validator=_model_name)
    negative_prompt: str | None = attrs.field(default=None, validator=_negative_prompt)
    cfg_scale: float | None = attrs.field(default=None, validator=check_cfg_scale)
    mode: str | None = attrs.field(default=None, validator=_mode)
    duration: str | None = attrs.field(default=None, converter=_duration, validator=_durations)
    camera_control: CameraControl | None = attrs.field(default=None, converter=_camera)
    callback_url: str | None = attrs.field(default=None, validator=check_callback_url)
    external_task_id: str | None = attrs.field(default=None, validator=_external_task_id)
    watermark: bool | None = attrs.field(default=None, validator=check_watermark)
    extra: Mapping[str, object] = attrs.field(
        factory=dict, converter=_extra, validator=_check_extra
    )

    def __attrs_post_init__(self) -> None:
        if self.image is None and self.image_tail is None:
            raise InvalidArgumentError("image", "image-to-video needs image, image_tail or both")
        if self.image is not None and self.image_tail is not None and self.camera_control:
            raise InvalidArgumentError(
                "camera_control", "Kling takes no camera_control with both image and image_tail"
            )

    def __repr__(self) -> str:
        # Base64 images are megabytes: shown by length only.
        return (
            f"ImageToVideo(image={_short(self.image)}, image_tail={_short(self.image_tail)}, "
            f"prompt={self.prompt!r}, model_name={self.model_name!r})"
        )

    @property
    def family(self) -> TaskFamily:
        """The task family whose routes this create goes to."""
        return TaskFamily.IMAGE2VIDEO

    @property
    def subject(self) -> str:
        """What the create is of, for errors and logs."""
        return "image-to-video"


def _short(image: str | None) -> str:
    if image is None or image.startswith(("http://", "https://", "sha256:")):
        return repr(image)  # a URL, or the digest a journal keeps of a base64 image
    return f"<base64, {len(image)} chars>"


CreateRequest: TypeAlias = ExtendRequest | TextToVideo | ImageToVideo
"""A create of any task family."""


def source_video_id(request: CreateRequest) -> str:
    """The video an extend is of; empty for a source create (it has none)."""
    return request.video_id if isinstance(request, ExtendRequest) else ""
