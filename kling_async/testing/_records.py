"""What the emulator remembers: requests received, callbacks attempted, tasks created."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from kling_async.testing._fault import Fault

__all__ = ["EmulatedTask", "RecordedCallback", "RecordedRequest"]

PARENT_DURATION = "5.0"
RESULT_DURATION = "9.1"
WATERMARK_SUFFIX = "_wm"


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the emulator received it, with the fault applied and the status sent.

    `route` is ``create``, ``query``, ``list``, ``media`` or ``other``; `path` is the decoded
    path and `raw_path` the path as sent (percent-escapes kept, no query string); `json` is the
    parsed body (None when there was none or it did not parse); `status` is None when no reply
    was sent (a dropped connection, a lost reply, or a request still being handled). `query`
    holds the URL query parameters; `headers` are the request headers as received.
    `family` is the task family of an API route (``video-extend``, ``text2video`` or
    ``image2video``; ``video-extend`` for the others).
    """

    method: str
    path: str
    route: str
    headers: Mapping[str, str]
    json: Any | None
    fault: Fault | None
    status: int | None
    query: Mapping[str, str] = attrs.field(factory=dict)
    raw_path: str = ""
    family: str = "video-extend"


@attrs.frozen(kw_only=True)
class RecordedCallback:
    """One callback POST the emulator attempted (or, for ``Fault.callback_lost()``, skipped).

    `body` is the bare task object that was (or would have been) sent; `fault` the injected
    callback fault, if any; `status` the HTTP status the receiver answered, None when there was
    no answer; `error` says why not (``"lost"``, a connection error, a timeout), else None.
    """

    url: str
    body: Mapping[str, Any]
    fault: Fault | None
    status: int | None
    error: str | None = None

    @property
    def task_id(self) -> str:
        """The body's ``task_id``."""
        return str(self.body.get("task_id", ""))

    @property
    def task_status(self) -> str:
        """The body's ``task_status``."""
        return str(self.body.get("task_status", ""))


@attrs.define(kw_only=True)
class EmulatedTask:
    """A task held by the emulator; `to_json()` is its Kling task object.

    Query, list and callbacks all carry that same object.

    `index` is the task's position in creation order (0 for the first). `manual` becomes True
    once `KlingEmulator.set_status` touched the task: from then on only further `set_status`
    calls change it. `timed` tasks advance by time: `starts_at` and `finishes_at` are when they
    turn ``processing`` and finish (Unix seconds of the emulator's clock, fixed at create).
    Other tasks get `finishes_at` when they reach ``succeed`` or ``failed``. `watermark` is the
    create's ``watermark_info.enabled`` (None when it sent none: the older task shape).
    `parent_duration` and `result_duration` are the lengths the task object shows (strings,
    as Kling sends them): the source's, and the source's plus what the extend added.
    `family` is the task's API (``video-extend``, ``text2video``, ``image2video``); only an
    extend has a source video (`video_id`, ``task_info.parent_video``).
    """

    task_id: str
    video_id: str
    status: str = "submitted"
    status_message: str = ""
    external_task_id: str | None = None
    parent_task_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    callback_url: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    polls: int = 0
    result_video_id: str = ""
    media_base_url: str = ""
    manual: bool = False
    index: int = 0
    watermark: bool | None = None
    unit_deduction: str | None = "1"
    cash_deduction: str | None = None
    list_price: str | None = None
    timed: bool = False
    starts_at: float | None = None
    finishes_at: float | None = None
    parent_duration: str = PARENT_DURATION
    result_duration: str = RESULT_DURATION
    family: str = "video-extend"

    def media_url(self, video_id: str) -> str:
        """Where the emulator serves the (fake) video `video_id`."""
        return f"{self.media_base_url}/media/{video_id}.mp4"

    @property
    def final_unit_deduction(self) -> str | None:
        """The ``final_unit_deduction`` of the task object, None when it is left out.

        `unit_deduction` once succeeded, ``"0"`` after a failure and while a task created with
        ``watermark_info`` runs; left out while a task of the older shape runs, and always
        when `unit_deduction` is None.
        """
        if self.unit_deduction is None:
            return None
        if self.status == "succeed":
            return self.unit_deduction
        if self.status == "failed" or self.watermark is not None:
            return "0"
        return None

    @property
    def final_balance_deduction(self) -> dict[str, str] | None:
        """The ``final_balance_deduction`` of the task object, None when it is left out.

        Once finished: ``quota`` (`cash_deduction`) and ``list_price`` (`list_price`) when
        succeeded, ``"0"`` each after a failure; only those of the two that are not None.
        Left out while the task runs, and when both are None.
        """
        if self.status not in ("succeed", "failed"):
            return None
        amounts = {"quota": self.cash_deduction, "list_price": self.list_price}
        failed = self.status == "failed"
        found = {key: "0" if failed else value for key, value in amounts.items() if value}
        return found or None

    def to_json(self) -> dict[str, Any]:
        """The full Kling task object (durations are strings, times are Unix milliseconds)."""
        task_info: dict[str, Any] = {}
        task_result: dict[str, Any] = {}
        if self.status != "failed":
            if self.family == "video-extend":
                task_info["parent_video"] = {
                    "id": self.video_id,
                    "url": self.media_url(self.video_id),
                    "duration": self.parent_duration,
                }
            if self.external_task_id is not None:
                task_info["external_task_id"] = self.external_task_id
        if self.status == "succeed":
            video = {
                "id": self.result_video_id,
                "url": self.media_url(self.result_video_id),
                "duration": self.result_duration,
            }
            if self.watermark:
                video["watermark_url"] = self.media_url(self.result_video_id + WATERMARK_SUFFIX)
            task_result["videos"] = [video]
        obj: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.status,
            "task_status_msg": self.status_message,
            "task_info": task_info,
            "task_result": task_result,
            "created_at": self.created_at_ms,
            "updated_at": self.updated_at_ms,
        }
        if self.watermark is not None:
            obj["watermark_info"] = {"enabled": self.watermark}
        deduction = self.final_unit_deduction
        if deduction is not None:
            obj["final_unit_deduction"] = deduction
        balance = self.final_balance_deduction
        if balance is not None:
            obj["final_balance_deduction"] = balance
        return obj
