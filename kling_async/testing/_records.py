"""What the emulator remembers: the requests it received and the tasks it created."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from kling_async.testing._fault import Fault

__all__ = ["EmulatedTask", "RecordedRequest"]

PARENT_DURATION = "5.0"
RESULT_DURATION = "9.1"


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the emulator received it, with the fault applied and the status sent.

    `route` is ``create``, ``query``, ``list``, ``media`` or ``other``; `json` is the parsed
    body (None when there was none or it did not parse); `status` is None when no reply was
    sent (a dropped connection, a lost reply, or a request still being handled). `query` holds
    the URL query parameters.
    """

    method: str
    path: str
    route: str
    headers: Mapping[str, str]
    json: Any | None
    fault: Fault | None
    status: int | None
    query: Mapping[str, str] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class EmulatedTask:
    """A video-extend task held by the emulator; `to_json()` is what query and list answer.

    `manual` becomes True once `KlingEmulator.set_status` touched the task: from then on only
    further `set_status` calls change it.
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

    def media_url(self, video_id: str) -> str:
        """Where the emulator serves the (fake) video `video_id`."""
        return f"{self.media_base_url}/media/{video_id}.mp4"

    def to_json(self) -> dict[str, Any]:
        """The full Kling task object (durations are strings, times are Unix milliseconds)."""
        task_info: dict[str, Any] = {}
        task_result: dict[str, Any] = {}
        if self.status != "failed":
            task_info["parent_video"] = {
                "id": self.video_id,
                "url": self.media_url(self.video_id),
                "duration": PARENT_DURATION,
            }
            if self.external_task_id is not None:
                task_info["external_task_id"] = self.external_task_id
        if self.status == "succeed":
            task_result["videos"] = [
                {
                    "id": self.result_video_id,
                    "url": self.media_url(self.result_video_id),
                    "duration": RESULT_DURATION,
                }
            ]
        return {
            "task_id": self.task_id,
            "task_status": self.status,
            "task_status_msg": self.status_message,
            "task_info": task_info,
            "task_result": task_result,
            "created_at": self.created_at_ms,
            "updated_at": self.updated_at_ms,
        }
