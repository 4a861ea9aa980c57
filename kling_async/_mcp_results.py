"""The MCP server's words: its tool arguments checked, and tasks shaped as JSON and text.

Pure (values in, values out): the driver (`_mcp_server`) hands in what the session said and
sends what comes out. Every result carries the task as JSON (id, family, status, message,
videos, cost, times; money as decimal strings) and one short line for a model that reads
text (docs/mcp.md, "Tools").
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

from .models import Cost, Task, TaskFamily, TaskStatus, Video

__all__ = [
    "DEFAULT_WAIT",
    "FAMILIES",
    "MAX_WAIT",
    "SpendingRefusal",
    "ToolProblem",
    "check_create_key",
    "check_limit",
    "check_timeout",
    "family_of",
    "progress_message",
    "task_json",
    "task_text",
    "waited_text",
]

DEFAULT_WAIT = 50.0  # seconds a wait_for_task waits when not told
MAX_WAIT = 300.0  # at most: an MCP client's own request timeout is often a few minutes
MAX_LIST = 100

# The families by the names the tools take: the SDK's route names and the tools' own.
FAMILIES = {
    "video-extend": TaskFamily.EXTEND,
    "extend": TaskFamily.EXTEND,
    "extend_video": TaskFamily.EXTEND,
    "text2video": TaskFamily.TEXT2VIDEO,
    "text_to_video": TaskFamily.TEXT2VIDEO,
    "image2video": TaskFamily.IMAGE2VIDEO,
    "image_to_video": TaskFamily.IMAGE2VIDEO,
}


class ToolProblem(ValueError):
    """A tool argument the server refuses before anything is sent; the text says why."""


class SpendingRefusal(ToolProblem):
    """A create the spending limit refused before it was sent; the text names the limit."""


def family_of(name: str | None) -> TaskFamily | None:
    """The family a tool's ``family`` argument names (None: not given)."""
    if name is None:
        return None
    family = FAMILIES.get(name.strip().lower())
    if family is None:
        raise ToolProblem(
            f"family must be one of video-extend, text2video, image2video; got {name!r}"
        )
    return family


def check_create_key(key: str | None) -> str | None:
    """A create tool's key: any text without '/', which names a chain's links (``KEY/1``,
    ``KEY/2``, ...; docs/mcp.md, "Chains"): a create under such a key would take a chain's
    place in the journal, and the chain would pay for its first links, then stop."""
    if key is not None and "/" in key:
        raise ToolProblem(
            f"key must not contain '/' (KEY/1, KEY/2, ... are the keys of chain_videos' "
            f"links); got {key!r}"
        )
    return key


def check_timeout(timeout_s: float | None) -> float:
    """A wait's seconds: ``DEFAULT_WAIT`` when not given, refused outside 0 to ``MAX_WAIT``."""
    if timeout_s is None:
        return DEFAULT_WAIT
    if not (math.isfinite(timeout_s) and 0 <= timeout_s <= MAX_WAIT):
        raise ToolProblem(f"timeout_s must be from 0 to {MAX_WAIT:g} seconds; got {timeout_s!r}")
    return float(timeout_s)


def check_limit(limit: int | None) -> int:
    """How many tasks list_tasks shows: 20 when not given, 1 to ``MAX_LIST``."""
    if limit is None:
        return 20
    if not 1 <= limit <= MAX_LIST:
        raise ToolProblem(f"limit must be from 1 to {MAX_LIST}; got {limit!r}")
    return limit


def _money(amount: decimal.Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def _cost(cost: Cost | None) -> dict[str, str | None] | None:
    if cost is None:
        return None
    return {
        "units": _money(cost.units),
        "cash": _money(cost.cash),
        "list_price": _money(cost.list_price),
    }


def _video(video: Video) -> dict[str, Any]:
    return {"id": video.id, "url": video.url, "duration": video.duration}


def _time(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def task_json(task: Task, family: TaskFamily) -> dict[str, Any]:
    """``task`` as a tool's structured content."""
    parent = task.parent_video
    return {
        "task_id": task.task_id,
        "family": family.value,
        "status": task.status.value,
        "done": task.done,
        "message": task.status_message,
        "videos": [_video(video) for video in task.videos],
        "parent_video": None if parent is None else _video(parent),
        "external_task_id": task.external_task_id,
        "cost": _cost(task.cost),
        "created_at": _time(task.created_at),
        "updated_at": _time(task.updated_at),
    }


_WORDS = {TaskStatus.SUCCEED: "succeeded"}  # Kling's "succeed", as a sentence says it


def _said(status: TaskStatus) -> str:
    return _WORDS.get(status, status.value)


def task_text(task: Task, family: TaskFamily) -> str:
    """One line about ``task`` that tells a model what it can do next."""
    head = f"{family.value} task {task.task_id} is {_said(task.status)}"
    if task.status is TaskStatus.SUCCEED and task.video is not None:
        video = task.video
        length = "" if video.duration is None else f" ({video.duration:g} s)"
        return (
            f"{head}: video {video.id}{length} at {video.url}; extend it with extend_video, "
            "or save it with download_video"
        )
    if task.status is TaskStatus.FAILED:
        return f"{head}: {task.status_message or 'no reason given'}"
    return f"{head}; call wait_for_task to wait for it (videos take a few minutes)"


def waited_text(task: Task | None, task_id: str, family: TaskFamily, seconds: float) -> str:
    """The line for a wait that ran out: not an error, the task keeps running."""
    status = "not yet seen" if task is None else _said(task.status)
    return (
        f"{family.value} task {task_id} is still {status} after waiting {seconds:g} s; it keeps "
        "running: call wait_for_task again"
    )


def progress_message(task: Task) -> str:
    """The message of a progress notification for a status change."""
    if task.status_message:
        return f"task {task.task_id} is {_said(task.status)}: {task.status_message}"
    return f"task {task.task_id} is {_said(task.status)}"
