"""One task in words: its result line and JSON on stdout, and the frames of its progress.

Pure functions (values in, text out) but `show`, which prints. The frames are what
`_cli_progress`'s views show while ``extend --wait`` or ``wait`` follows a task, and while
``--download`` fetches its video.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from ._cli_output import (
    OutputClosed,
    amount_text,
    clean,
    clock_text,
    cost_text,
    silence_stdout,
    size_text,
)
from ._cli_progress import Display, Frame, markup
from .models import Task, TaskStatus

__all__ = [
    "HEARTBEAT_SECONDS",
    "download_display",
    "download_frame",
    "show",
    "task_display",
    "task_frame",
    "task_json",
    "task_line",
]

# Plain progress repeats the status at most this often while it does not change.
HEARTBEAT_SECONDS = 30.0
# Plain download progress writes at most one line a second (and the last one).
_DOWNLOAD_INTERVAL = 1.0


def task_line(task: Task) -> str:
    """``<id>  <status>  (<message>)  -> <url> <duration>s  cost <cost>``, cleaned of
    control characters (the cost once the server reports one)."""
    parts = [f"{task.task_id}  {task.status.value}"]
    if task.status_message:
        parts.append(f"({task.status_message})")
    if task.video is not None:
        duration = f" {task.video.duration:g}s" if task.video.duration is not None else ""
        parts.append(f"-> {task.video.url}{duration}")
    cost = cost_text(task.cost)
    if cost:
        parts.append(f"cost {cost}")
    return clean("  ".join(parts))


def task_json(task: Task) -> dict[str, Any]:
    """The task as ``--json`` prints it: one object, the same fields for every command."""
    parent = task.parent_video
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "status_message": task.status_message,
        "created_at": task.created_at.isoformat() if task.created_at else None,
        "updated_at": task.updated_at.isoformat() if task.updated_at else None,
        "external_task_id": task.external_task_id,
        "parent_video": (
            None
            if parent is None
            else {"id": parent.id, "url": parent.url, "duration": parent.duration}
        ),
        "videos": [
            {"id": video.id, "url": video.url, "duration": video.duration} for video in task.videos
        ],
        "cost": (
            None
            if task.cost is None
            else {
                "units": amount_text(task.cost.units),
                "cash": amount_text(task.cost.cash),
                "list_price": amount_text(task.cost.list_price),
            }
        ),
    }


def show(task: Task, as_json: bool, *, file: pathlib.Path | None = None) -> None:
    """Print the task (and the downloaded file) on stdout; `OutputClosed` if nobody reads."""
    if as_json:
        shown = task_json(task)
        if file is not None:
            shown["file"] = str(file)
        text = json.dumps(shown)
    else:
        text = task_line(task) if file is None else f"{task_line(task)}\n{clean(str(file))}"
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        raise OutputClosed from None


_MARKS = {TaskStatus.SUCCEED: "[green]✓[/]", TaskStatus.FAILED: "[red]✗[/]"}


def task_frame(task_id: str, task: Task | None, elapsed: float) -> Frame:
    """A wait's progress: a line per status, ``still <status>`` as the heartbeat; on a
    terminal a spinner line, then ✓ succeed, ✗ failed or … still running when it ends."""
    clock = clock_text(elapsed)
    status = markup(task.status.value) if task is not None else "querying"
    message = f" ({markup(task.status_message)})" if task and task.status_message else ""
    described = f"task {markup(task_id)}  [bold]{status}[/]{message}  {clock}"
    mark = _MARKS.get(task.status, "[yellow]…[/]") if task is not None else "[yellow]…[/]"
    if task is None:
        line = repeat = ""
    else:
        plain = f"  ({task.status_message})" if task.status_message else ""
        line = f"{clock}  {task.status.value}{plain}"
        repeat = f"{clock}  still {task.status.value}"
    return Frame(
        key=task,
        line=line,
        repeat=repeat,
        live=described + "  [dim](Ctrl+C stops waiting)[/]",
        final=f"{mark} {described}",
    )


def task_display(task_id: str, *, heartbeat: float = HEARTBEAT_SECONDS) -> Display[Task | None]:
    """How a wait for ``task_id`` shows (its state: the newest task seen, None before)."""
    return Display(
        frame=lambda task, elapsed: task_frame(task_id, task, elapsed),
        header=f"waiting for task {task_id} (Ctrl+C stops waiting; the task keeps running)",
        heartbeat=heartbeat,
    )


def download_frame(name: str, received: tuple[int, int | None]) -> Frame:
    """``downloading VIDEO: 1.2 MB of 4.5 MB``; on a terminal a bar, then ✓ downloaded VIDEO
    (size) once every byte is in (nothing when it stopped short)."""
    done, total = received
    of = f" of {size_text(total)}" if total else ""
    final = f"[green]✓[/] downloaded {markup(name)} ({size_text(done)})"
    return Frame(
        key=received,
        line=f"downloading {name}: {size_text(done)}{of}",
        done=done,
        total=total,
        final=final if done == total else "",
    )


def download_display(name: str) -> Display[tuple[int, int | None]]:
    """How a download of video ``name`` shows (its state: bytes received and expected)."""
    return Display(
        frame=lambda received, elapsed: download_frame(name, received),
        interval=_DOWNLOAD_INTERVAL,
        bar="bytes",
        label=f"downloading {markup(name)}",
    )
