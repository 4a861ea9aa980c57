"""A task as Kling's wire JSON and back: how task states travel through the fleet's Redis and
into the journal (a finished task's JSON, with its cost).

`encode_task` writes the task object as a query reply's ``data`` carries it (so the one
parser of replies reads it back, tolerating what it does not know); `decode_task` reads it.
Pure: values in, values out.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ._converter import converter, load_json
from .models import Task, Video

__all__ = ["decode_task", "encode_task", "read_task", "task_json", "updated_millis"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)
_STRUCTURE = converter.get_structure_hook(Task)


def encode_task(task: Task) -> str:
    """``task`` as Kling's JSON task object (compact, keys in wire order)."""
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "task_status": task.status.value,
        "task_status_msg": task.status_message,
    }
    if task.created_at is not None:
        data["created_at"] = _millis(task.created_at)
    if task.updated_at is not None:
        data["updated_at"] = _millis(task.updated_at)
    info: dict[str, Any] = {}
    if task.info.parent_video is not None:
        info["parent_video"] = _video(task.info.parent_video)
    if task.info.external_task_id is not None:
        info["external_task_id"] = task.info.external_task_id
    data["task_info"] = info
    data["task_result"] = {"videos": [_video(video) for video in task.result.videos]}
    cost = task.cost
    if task.final_unit_deduction is not None:
        data["final_unit_deduction"] = task.final_unit_deduction
    elif cost is not None and cost.units is not None:
        data["final_unit_deduction"] = str(cost.units)
    if cost is not None and (cost.cash is not None or cost.list_price is not None):
        data["final_balance_deduction"] = {  # amounts as decimal strings, as Kling sends them
            key: str(amount)
            for key, amount in (("quota", cost.cash), ("list_price", cost.list_price))
            if amount is not None
        }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def task_json(task: Task) -> dict[str, Any]:
    """``task`` as Kling's task object, a JSON mapping (what `encode_task` writes)."""
    data: dict[str, Any] = json.loads(encode_task(task))
    return data


def read_task(data: Any) -> Task:
    """The task of a JSON task object (as `task_json` makes it, or as Kling sends it);
    ``ValueError`` if it is not one."""
    if not isinstance(data, dict):
        raise ValueError(f"a task object was expected, got {type(data).__name__}")
    try:
        return _STRUCTURE(data, Task)  # type: ignore[no-any-return]
    except Exception as error:  # cattrs' validation errors: the data is not a task
        raise ValueError(f"not a task object: {error}") from error


def decode_task(text: str | bytes) -> Task:
    """The task `encode_task` wrote (or any wire task object); ``ValueError`` if it is not one."""
    return read_task(load_json(text))


def updated_millis(task: Task) -> int:
    """The task's ``updated_at`` in Unix milliseconds, -1 when it has none (for ordering)."""
    return -1 if task.updated_at is None else int(_millis(task.updated_at))


def _millis(when: dt.datetime) -> int | float:
    """Unix milliseconds, an integer unless the time has a fraction of one (kept exactly)."""
    micros = (when - _EPOCH) // _MICROSECOND
    return micros // 1000 if micros % 1000 == 0 else micros / 1000


def _video(video: Video) -> dict[str, Any]:
    data: dict[str, Any] = {"id": video.id, "url": video.url}
    if video.duration is not None:
        data["duration"] = repr(video.duration)
    if video.watermark_url is not None:
        data["watermark_url"] = video.watermark_url
    return data
