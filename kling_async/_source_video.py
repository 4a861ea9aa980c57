"""What Kling takes as the source of an extend, and why it refused one (pure).

Kling's rules (``docs/errors.md``, "Refused source videos"): video-extend takes only videos
made by its V1.0, V1.5 and V1.6 models; videos are deleted 30 days after they are made; an
extended video may be at most 3 minutes long, and each extend adds 4-5 s. A discontinued
model is answered with 404 and code 1203. Values in, values out: which refusal a reply is
(`source_video_reason`, `source_video_error`), whether an extend of a video of known length
would pass the limit (`too_long`), and the lengths a session has seen (`KnownDurations`).
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable

from .errors import (
    APIError,
    InvalidArgumentError,
    InvalidRequestError,
    NotFoundError,
    SourceVideoError,
    SourceVideoInvalidError,
    SourceVideoNotFoundError,
)
from .models import SourceVideoReason, Task, Video

__all__ = [
    "EXTEND_ADDS_AT_LEAST",
    "MAX_EXTENDED_SECONDS",
    "KnownDurations",
    "source_video_error",
    "source_video_reason",
    "too_long",
]

MAX_EXTENDED_SECONDS = 180.0  # an extended video may be at most 3 minutes
EXTEND_ADDS_AT_LEAST = 4.0  # each extend adds 4-5 s: only what certainly passes is refused

# The codes a refusal of the source video comes with: invalid request or parameter (a
# video too long), resource does not exist (a video expired, deleted, or of a retired
# model). Any other code is about something else.
_SOURCE_CODES = frozenset({1200, 1201, 1203})

# What the server's message says, checked in this order. Kling documents no wording, so
# these are the words its replies (and gateways') are likely to use, English and Chinese;
# the SDK's own explanations (errors.py) match the reason they stand for, so that a
# journal's copy of a refusal reads back as the same reason.
# A word alone ("model", "duration") is not enough: a gateway's "no channel for this model"
# or "model X does not support watermark_info" is about something else.
_PATTERNS: tuple[tuple[SourceVideoReason, re.Pattern[str]], ...] = (
    (
        SourceVideoReason.MODEL_RETIRED,
        re.compile(r"discontinu|retire|deprecat|no longer (supported|available)|下线|停用"),
    ),
    (
        SourceVideoReason.VIDEO_EXPIRED,
        re.compile(r"expire|deleted|30 days|过期|删除"),
    ),
    (
        SourceVideoReason.TOO_LONG,
        re.compile(
            r"video[^.]{0,60}(too long|exceed)|duration[^.]{0,40}(exceed|too long|over|limit)"
            r"|\b3 ?min|\b180 ?s|时长.{0,10}(超|过)"
        ),
    ),
)
# A video said to be missing (with no code, a 404 alone may be a gateway's unknown route).
_NOT_FOUND = re.compile(
    r"video\b[^/.]{0,60}(does not exist|not exist|not found|no such)"
    r"|(no such|unknown) video|did not find|视频.{0,10}不存在"
)


def source_video_reason(status: int, code: int | None, message: str) -> SourceVideoReason | None:
    """Why a create was refused for its source video, read from the reply's HTTP status,
    business code and message; None when the refusal is about something else.

    A 1203 on a create can only be about the video it names, so one whose message says
    nothing known is `SourceVideoReason.NOT_FOUND`, never None.
    """
    if code is not None and code not in _SOURCE_CODES:
        return None
    if code is None and status not in (400, 404):
        return None
    text = message.casefold()
    for reason, pattern in _PATTERNS:
        if pattern.search(text):
            return reason
    if code == 1203:
        return SourceVideoReason.NOT_FOUND
    if _NOT_FOUND.search(text):
        return SourceVideoReason.NOT_FOUND
    return None


def source_video_error(
    cls: type[APIError],
    message: str,
    *,
    video_id: str,
    status: int,
    code: int | None = None,
    request_id: str | None = None,
    gateway_code: str | None = None,
    retry_after: float | None = None,
    reason_status: int | None = None,
    words: str | None = None,
) -> SourceVideoError | None:
    """The error for a create of ``video_id`` refused with ``cls`` (what `error_class_for`
    chose), or None when the refusal is not about the source video.

    The class is a subclass of ``cls``: an ``except NotFoundError`` or ``except
    InvalidRequestError`` that caught the refusal before still does. ``reason_status`` and
    ``words`` are the status and the text to read the reason from when they are not
    ``status`` and ``message`` (a journal's copy of a refusal).
    """
    if issubclass(cls, NotFoundError):
        source_cls: type[SourceVideoError] = SourceVideoNotFoundError
    elif issubclass(cls, InvalidRequestError):
        source_cls = SourceVideoInvalidError
    else:
        return None
    reason = source_video_reason(
        status if reason_status is None else reason_status,
        code,
        message if words is None else words,
    )
    if reason is None:
        return None
    return source_cls(
        message,
        video_id=video_id,
        reason=reason,
        status=status,
        code=code,
        request_id=request_id,
        gateway_code=gateway_code,
        retry_after=retry_after,
    )


def too_long(
    video_id: str, duration: float | None, *, index: int | None = None
) -> InvalidArgumentError | None:
    """The refusal of an extend of ``video_id``, ``duration`` seconds long (None: unknown),
    that would pass 3 minutes even if it added the least an extend adds; None when it may
    not (Kling decides), or the length is unknown. ``index``:
    the request's place in a batch, named in the message."""
    if duration is None or duration + EXTEND_ADDS_AT_LEAST <= MAX_EXTENDED_SECONDS:
        return None
    where = "" if index is None else f"requests[{index}]: "
    return InvalidArgumentError(
        "video_id",
        f"{where}video {video_id!r} is {duration:g} s long: extending it (each extend adds at "
        f"least {EXTEND_ADDS_AT_LEAST:g} s) would pass {MAX_EXTENDED_SECONDS:g} s, the longest "
        "an extended video may be; nothing was sent",
    )


class KnownDurations:
    """The lengths of the videos a session saw in tasks (results and sources), the most
    recently seen kept up to a bound."""

    __slots__ = ("_durations", "_limit")

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._durations: collections.OrderedDict[str, float] = collections.OrderedDict()

    def saw(self, task: Task) -> None:
        """Remember the lengths ``task`` tells of (its source video's and its results')."""
        parent = task.info.parent_video
        if parent is not None:
            self._keep((parent,))
        if task.result.videos:
            self._keep(task.result.videos)

    def _keep(self, videos: Iterable[Video]) -> None:
        durations = self._durations
        for video in videos:
            duration = video.duration
            if duration is None or not math.isfinite(duration):
                continue
            durations[video.id] = duration
            durations.move_to_end(video.id)
            if len(durations) > self._limit:
                durations.popitem(last=False)

    def get(self, video_id: str) -> float | None:
        """The length of ``video_id`` in seconds, or None when not known."""
        return self._durations.get(video_id)

    def __len__(self) -> int:
        return len(self._durations)
