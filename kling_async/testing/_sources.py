"""The emulator's reading of text-to-video and image-to-video creates (Kling's old design).

Pure: a create body in, the fields a task is made from out, or the refusal Kling would send
(400 / 1201, invalid parameter). Unknown fields are accepted, as Kling accepts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = ["FAMILIES", "SourceCreate", "SourceRefusal", "read_source_create"]

EXTEND: Final = "video-extend"
TEXT2VIDEO: Final = "text2video"
IMAGE2VIDEO: Final = "image2video"
FAMILIES: Final = (EXTEND, TEXT2VIDEO, IMAGE2VIDEO)
_MAX_PROMPT = 2500
_MODES = ("std", "pro")
_DURATIONS = ("5", "10")
_RATIOS = ("16:9", "9:16", "1:1")


class SourceRefusal(Exception):
    """The create is refused: ``message`` says why (HTTP 400, code 1201)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen(kw_only=True)
class SourceCreate:
    """What a source create asked for; ``duration`` is the video's length in seconds."""

    model_name: str
    prompt: str | None
    negative_prompt: str | None
    duration: float


def read_source_create(family: str, body: Mapping[str, Any]) -> SourceCreate:
    """Check a text2video or image2video body as Kling does; raise `SourceRefusal` if bad."""
    prompt = _text(body, "prompt")
    if family == TEXT2VIDEO and not prompt:
        raise SourceRefusal("prompt is required")
    if family == IMAGE2VIDEO:
        images = [body.get(name) for name in ("image", "image_tail")]
        if not any(images):
            raise SourceRefusal("image or image_tail is required")
        for image in images:
            if image is not None and not isinstance(image, str):
                raise SourceRefusal("image must be a string (a URL or base64)")
            if isinstance(image, str) and image.startswith("data:"):
                raise SourceRefusal("image must be bare base64, without a data: prefix")
    model = body.get("model_name", body.get("model", "kling-v1"))
    if not isinstance(model, str) or not model:
        raise SourceRefusal("model_name must be a non-empty string")
    _choice(body, "mode", _MODES)
    duration = _choice(body, "duration", _DURATIONS) or "5"
    if family == TEXT2VIDEO:
        _choice(body, "aspect_ratio", _RATIOS)
    cfg = body.get("cfg_scale")
    if cfg is not None and (
        isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 0 <= cfg <= 1
    ):
        raise SourceRefusal("cfg_scale must be a number between 0 and 1")
    return SourceCreate(
        model_name=model,
        prompt=prompt,
        negative_prompt=_text(body, "negative_prompt"),
        duration=float(duration) + 0.1,  # Kling's results run a little over: "5.1"
    )


def _text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SourceRefusal(f"{name} must be a string")
    if len(value) > _MAX_PROMPT:
        raise SourceRefusal(f"{name} may be at most {_MAX_PROMPT} characters")
    return value


def _choice(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = body.get(name)
    if value is not None and value not in allowed:
        raise SourceRefusal(f"{name} must be one of {', '.join(allowed)}")
    return value
