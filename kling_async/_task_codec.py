"""A task as text for Redis: Kling's wire JSON of the task object, read back as a `Task`.

STAND-IN (branch fcallbacks): the states engineer owns this module; this minimal copy keeps
the callback receiver's branch self-contained until theirs is merged over it.
"""

from __future__ import annotations

import json
from typing import Any

from ._converter import converter
from .models import Task, Video

__all__ = ["decode_task", "encode_task"]


def _millis(value: Any) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _video(video: Video) -> dict[str, Any]:
    return {
        "id": video.id,
        "url": video.url,
        "duration": None if video.duration is None else str(video.duration),
        "watermark_url": video.watermark_url,
    }


def encode_task(task: Task) -> str:
    """Kling's wire JSON of ``task`` (what a query's ``data`` or a callback's body holds)."""
    parent = task.info.parent_video
    document = {
        "task_id": task.task_id,
        "task_status": task.status.value,
        "task_status_msg": task.status_message,
        "created_at": _millis(task.created_at),
        "updated_at": _millis(task.updated_at),
        "task_info": {
            "parent_video": None if parent is None else _video(parent),
            "external_task_id": task.info.external_task_id,
        },
        "task_result": {"videos": [_video(video) for video in task.result.videos]},
        "final_unit_deduction": task.final_unit_deduction,
    }
    return json.dumps(document, separators=(",", ":"))


def decode_task(text: str | bytes) -> Task:
    """The `Task` that `encode_task` wrote (``ValueError`` when it is not one)."""
    task: Task = converter.structure(json.loads(text), Task)
    return task
