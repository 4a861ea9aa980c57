"""The command line: ``python -m kling_async`` (or ``kling-async``).

``demo`` runs the SDK against the built-in emulator, no account needed; ``extend``, ``get``,
``wait`` and ``list`` talk to Kling or a gateway with the credentials from the environment
(``KLING_API_KEY`` or ``KLING_ACCESS_KEY`` + ``KLING_SECRET_KEY``, and ``KLING_BASE_URL``).
This module is the CLI's output layer: it alone prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from ._policies import PollPolicy, RetryPolicy
from ._session import KlingSession
from .errors import KlingError, TaskFailedError
from .models import Task

__all__ = ["main"]


def _task_line(task: Task) -> str:
    parts = [f"{task.task_id}  {task.status.value}"]
    if task.status_message:
        parts.append(f"({task.status_message})")
    if task.video is not None:
        duration = f" {task.video.duration:g}s" if task.video.duration is not None else ""
        parts.append(f"-> {task.video.url}{duration}")
    return "  ".join(parts)


def _task_json(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "status_message": task.status_message,
        "created_at": task.created_at.isoformat() if task.created_at else None,
        "updated_at": task.updated_at.isoformat() if task.updated_at else None,
        "external_task_id": task.external_task_id,
        "videos": [
            {"id": video.id, "url": video.url, "duration": video.duration} for video in task.videos
        ],
    }


def _show(task: Task, as_json: bool) -> None:
    print(json.dumps(_task_json(task)) if as_json else _task_line(task))


async def _demo(args: argparse.Namespace) -> int:
    from .testing import Fault, KlingEmulator

    async with KlingEmulator(step_seconds=args.step) as emulator:
        emulator.fail_video("demo-video-risky", "content risk control")
        # Show a retry: the first create meets Kling's rate limit (1302) and is sent again.
        emulator.inject(Fault.rate_limited(1302), route="create")
        print(f"emulator listening on {emulator.base_url} (no account needed)")
        async with KlingSession(
            access_key=emulator.access_key,
            secret_key=emulator.secret_key,
            base_url=emulator.base_url,
            # Poll about twice per emulated step, so the demo shows every status.
            poll_policy=PollPolicy(first_delay=args.step / 2, growth=1.5, max_delay=args.step * 2),
            retry_policy=RetryPolicy(first_delay=args.step / 2),
        ) as session:
            videos = ["demo-video-1", "demo-video-2", "demo-video-risky"]
            handles = [await session.extend(video, prompt="pull back") for video in videos]
            for video, handle in zip(videos, handles, strict=True):
                print(f"submitted {video} as task {handle.task_id}")

            async def follow(video: str, handle: Any) -> None:
                async for task in handle.watch():
                    print(f"{video}: {_task_line(task)}")

            async with anyio.create_task_group() as group:
                for video, handle in zip(videos, handles, strict=True):
                    group.start_soon(follow, video, handle)
            stats = session.statistics()
            print(
                f"done: {stats.requests_sent} requests, {stats.retries} retried, "
                f"{stats.tasks_created} tasks created"
            )
    return 0


async def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return await _demo(args)
    async with KlingSession(base_url=args.base_url) as session:
        if args.command == "extend":
            handle = await session.extend(
                args.video_id,
                prompt=args.prompt,
                negative_prompt=args.negative_prompt,
                cfg_scale=args.cfg_scale,
                callback_url=args.callback_url,
                parent_task_id=args.parent_task_id,
                external_task_id=args.external_task_id,
            )
            assert handle.last is not None
            _show(handle.last, args.json)
            if args.wait:
                _show(await handle.wait(timeout=args.timeout), args.json)
        elif args.command == "get":
            _show(await session.get_task(args.task_id), args.json)
        elif args.command == "wait":
            _show(await session.task(args.task_id).wait(timeout=args.timeout), args.json)
        elif args.command == "list":
            async for task in session.list_tasks(page_size=args.page_size, max_pages=args.pages):
                _show(task, args.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kling_async", description="Extend Kling videos from the command line."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run against the built-in emulator (no account)")
    demo.add_argument(
        "--step", type=float, default=0.5, help="emulated seconds per status step (default 0.5)"
    )

    def remote(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--base-url", default=None, help="default: KLING_BASE_URL or Kling's")
        sub.add_argument("--json", action="store_true", help="one JSON object per line")
        return sub

    extend = remote("extend", "submit an extend task")
    extend.add_argument("video_id")
    extend.add_argument("--prompt")
    extend.add_argument("--negative-prompt")
    extend.add_argument("--cfg-scale", type=float)
    extend.add_argument("--callback-url")
    extend.add_argument("--parent-task-id", help="the parent task id some gateways require")
    extend.add_argument("--external-task-id")
    extend.add_argument("--wait", action="store_true", help="wait until the task is done")
    extend.add_argument("--timeout", type=float, default=None, help="bound the wait (seconds)")
    get = remote("get", "show a task by task id or external task id")
    get.add_argument("task_id")
    wait = remote("wait", "wait until a task is done")
    wait.add_argument("task_id")
    wait.add_argument("--timeout", type=float, default=None, help="bound the wait (seconds)")
    listing = remote("list", "list tasks, newest first")
    listing.add_argument("--page-size", type=int, default=30)
    listing.add_argument("--pages", type=int, default=1, help="pages to fetch (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (1 for a Kling error, 2 for bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "extend" and args.timeout is not None and not args.wait:
        parser.error("--timeout bounds --wait; pass --wait too")
    try:
        return anyio.run(_run, args)
    except TaskFailedError as error:
        _show(error.task, getattr(args, "json", False))
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KlingError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
