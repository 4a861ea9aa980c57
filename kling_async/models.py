"""Frozen, keyword-only models of what goes over the wire: the extend request and the task.

They do no I/O. The one cattrs converter in ``_converter`` turns Kling's JSON into them;
docs/concepts.md, "Tasks and statuses" says how each wire field reads.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs

from .errors import InvalidArgumentError

__all__ = [
    "Cost",
    "ExtendRequest",
    "SessionStatistics",
    "SourceVideoReason",
    "Task",
    "TaskFamily",
    "TaskInfo",
    "TaskResult",
    "TaskStatus",
    "Video",
    "check_callback_url",
    "check_cfg_scale",
    "check_id",
    "check_text",
    "check_text_field",
    "check_watermark",
]

MAX_PROMPT_LENGTH = 2500  # Kling refuses a longer prompt or negative_prompt (in characters)


class TaskFamily(str, enum.Enum):
    """Which of Kling's task APIs a task belongs to; its value is the route's last segment.

    Each family has its own create, query and list routes under ``/v1/videos/``
    (docs/concepts.md, "Task families"); everything else about waiting is shared.

    Added in version 0.3.
    """

    EXTEND = "video-extend"
    TEXT2VIDEO = "text2video"
    IMAGE2VIDEO = "image2video"

    def __str__(self) -> str:
        return str(self.value)


class TaskStatus(str, enum.Enum):
    """The status of a task. A value the server invents is kept, as a non-member, not done.

    ``TaskStatus("queueing")`` returns a status whose ``value`` is ``"queueing"``, whose
    ``known`` is False and which is neither started nor done: Kling may add statuses, so an
    unknown one is kept and treated as not finished (docs/concepts.md, "Tasks and statuses").
    """

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if not isinstance(value, str):
            return None
        unknown = str.__new__(cls, value)
        unknown._name_ = "UNKNOWN"
        unknown._value_ = value
        return unknown

    @property
    def known(self) -> bool:
        """True for the four statuses Kling documents."""
        return self in _KNOWN  # a status is a str equal to its value (cheaper than .value)

    @property
    def done(self) -> bool:
        """True once the task has finished, successfully or not."""
        return self in _DONE  # as in `known`: read on every reply, so without .value

    def __repr__(self) -> str:
        return f"<TaskStatus.{self._name_}: {self.value!r}>"

    def __str__(self) -> str:
        return str(self.value)


_KNOWN = frozenset(s.value for s in TaskStatus)
_DONE = frozenset({TaskStatus.SUCCEED.value, TaskStatus.FAILED.value})


class SourceVideoReason(str, enum.Enum):
    """Why Kling will not extend a source video (``docs/errors.md``, "Refused source videos").

    Added in version 0.3.
    """

    MODEL_RETIRED = "model_retired"
    """Made by a model Kling retired, or one video-extend does not take (only V1.0, V1.5
    and V1.6 videos can be extended)."""
    VIDEO_EXPIRED = "video_expired"
    """Expired or deleted: Kling deletes videos 30 days after they are made."""
    TOO_LONG = "too_long"
    """Extending it would pass 3 minutes, the longest an extended video may be."""
    NOT_FOUND = "not_found"
    """Kling did not find it, and did not say why (a wrong id, another account's video, or
    one of the above in words the SDK does not know)."""

    def __str__(self) -> str:
        return str(self.value)


@attrs.frozen(kw_only=True)
class Video:
    """A video Kling made: ``duration`` is in seconds (the wire sends a string, ``"5.1"``)."""

    id: str
    url: str = ""
    duration: float | None = None
    watermark_url: str | None = None
    """The watermarked copy, when the create asked for one (versionadded 0.2)."""


@attrs.frozen(kw_only=True)
class TaskInfo:
    """What the task was made from: the source video and the caller's external id."""

    parent_video: Video | None = None
    external_task_id: str | None = None


@attrs.frozen(kw_only=True)
class TaskResult:
    """What the task made: the extended videos (present once it succeeded)."""

    videos: tuple[Video, ...] = ()


_optional_decimal = attrs.validators.optional(attrs.validators.instance_of(decimal.Decimal))


@attrs.frozen(kw_only=True)
class Cost:
    """What a finished task cost, as exact decimals; a part the server left out is None.

    Read from ``final_unit_deduction`` and ``final_balance_deduction`` (docs/concepts.md,
    "What a task cost"). Added in version 0.2.
    """

    units: decimal.Decimal | None = attrs.field(default=None, validator=_optional_decimal)
    """Resource-pack units deducted (``final_unit_deduction``)."""
    cash: decimal.Decimal | None = attrs.field(default=None, validator=_optional_decimal)
    """Cash deducted, after discounts (``final_balance_deduction.quota``)."""
    list_price: decimal.Decimal | None = attrs.field(default=None, validator=_optional_decimal)
    """The cash the task costs at list price (``final_balance_deduction.list_price``)."""


@attrs.frozen(kw_only=True)
class Task:
    """One task (of any `TaskFamily`) as the server last described it.

    ``created_at`` and ``updated_at`` are aware UTC datetimes (the wire sends Unix
    milliseconds); fields the server left out are ``None`` or empty.
    """

    task_id: str
    status: TaskStatus
    status_message: str = ""
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    info: TaskInfo = TaskInfo()
    result: TaskResult = TaskResult()
    final_unit_deduction: str | None = None
    """What the task cost in units, as the server spelled it; None in older replies (0.2).
    `cost` has the same as an exact decimal."""
    cost: Cost | None = None
    """What the task cost (units, cash, list price); None when the reply says none (0.2)."""

    @property
    def done(self) -> bool:
        """True once the task has finished (``succeed`` or ``failed``)."""
        return self.status.done

    @property
    def videos(self) -> tuple[Video, ...]:
        """The result videos; empty until the task succeeded."""
        return self.result.videos

    @property
    def video(self) -> Video | None:
        """The first result video, the one an extension makes, or ``None``."""
        return self.result.videos[0] if self.result.videos else None

    @property
    def parent_video(self) -> Video | None:
        """The source video that was extended, when the server said so (an extend's only)."""
        return self.info.parent_video

    @property
    def external_task_id(self) -> str | None:
        """The caller-chosen (or session-stamped) id, when the server echoed it."""
        return self.info.external_task_id


_Validator = Callable[[Any, Any, Any], None]


def check_text(field: str, value: str) -> None:
    """Refuse text that cannot travel as UTF-8 (lone surrogates) before anything is sent."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            field, f"is not valid Unicode text (a lone surrogate at position {exc.start})"
        ) from None


def check_text_field(field: str, max_length: int | None) -> _Validator:
    def check(_instance: object, _attribute: object, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise TypeError(f"{field} must be a str, not {type(value).__name__}")
        if max_length is not None and len(value) > max_length:
            raise InvalidArgumentError(
                field, f"at most {max_length} characters allowed, got {len(value)}"
            )
        check_text(field, value)

    return check


def check_id(field: str, *, required: bool) -> _Validator:
    def check(_instance: object, _attribute: object, value: object) -> None:
        if value is None and not required:
            return
        if not isinstance(value, str):
            raise TypeError(f"{field} must be a str, not {type(value).__name__}")
        if not value.strip():
            raise InvalidArgumentError(field, "must not be empty")
        check_text(field, value)

    return check


def check_cfg_scale(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cfg_scale must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InvalidArgumentError("cfg_scale", f"must be between 0 and 1, got {value!r}")


def check_callback_url(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"callback_url must be a str, not {type(value).__name__}")
    check_text("callback_url", value)
    try:
        parsed = urllib.parse.urlsplit(value)
        parsed.port  # noqa: B018  # raises for ":abc" and ports past 65535
    except ValueError as exc:
        raise InvalidArgumentError(
            "callback_url", f"is not a valid URL ({exc}): {value!r}"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidArgumentError("callback_url", f"must be an http(s) URL, got {value!r}")


def check_watermark(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"watermark must be a bool, not {type(value).__name__}")


@attrs.frozen(kw_only=True)
class ExtendRequest:
    """The body of a create, validated when it is built (docs/errors.md, "Misuse raises builtins").

    A bad value raises `InvalidArgumentError` (a ``ValueError``)
    naming the field, a value of the wrong type raises ``TypeError``: both before any I/O.
    ``parent_task_id`` is sent as ``task_id``, the parent task some gateways require.
    """

    video_id: str = attrs.field(validator=check_id("video_id", required=True))
    prompt: str | None = attrs.field(
        default=None,
        validator=check_text_field("prompt", MAX_PROMPT_LENGTH),
    )
    negative_prompt: str | None = attrs.field(
        default=None,
        validator=check_text_field("negative_prompt", MAX_PROMPT_LENGTH),
    )
    cfg_scale: float | None = attrs.field(default=None, validator=check_cfg_scale)
    callback_url: str | None = attrs.field(default=None, validator=check_callback_url)
    parent_task_id: str | None = attrs.field(
        default=None,
        validator=check_id("parent_task_id", required=False),
    )
    external_task_id: str | None = attrs.field(
        default=None,
        validator=check_id("external_task_id", required=False),
    )
    watermark: bool | None = attrs.field(default=None, validator=check_watermark)
    """Ask for a watermarked copy too; sent as ``watermark_info`` (versionadded 0.2)."""

    @property
    def family(self) -> TaskFamily:
        """The task family whose routes this create goes to (versionadded 0.3)."""
        return TaskFamily.EXTEND

    @property
    def subject(self) -> str:
        """What the create is of, for errors and logs: ``video 'id'``."""
        return f"video {self.video_id!r}"


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """A snapshot of what a session is doing and has done.

    Added in version 0.1.
    """

    requests_sent: int
    """HTTP requests sent, retries included."""
    retries: int
    """Requests sent again after a transient failure (1303 slot waits included)."""
    in_flight: int
    """Requests on the wire right now."""
    waits_pending: int
    """``wait()``/``wait_started()``/``watch()``/``as_completed()`` calls in progress."""
    tasks_created: int
    """Tasks this session created (or found again after an ambiguous create)."""
    list_requests: int = 0
    """List pages read to refresh pending waits (versionadded 0.2)."""
    list_refresh: bool | None = None
    """Whether waits refresh through the list: None while undecided (versionadded 0.2)."""
    rate_limit: float | None = None
    """Requests per second the session holds itself to after a 1302, or None (0.2)."""
    tasks_tracked: int = 0
    """Task states held: a live handle or wait, or a receiver token's open create (0.2)."""
    callback_tokens: int = 0
    """Receiver tokens of creates not yet seen finished, by a reply or a callback (0.2)."""
    units_spent: decimal.Decimal = decimal.Decimal(0)
    """Units the finished tasks this session saw cost, each task counted once (0.2)."""
    cash_spent: decimal.Decimal = decimal.Decimal(0)
    """Cash (``quota``) the finished tasks this session saw cost, each counted once (0.2)."""
