"""Child process for the fleet's tests: one `KlingEmulator`, outliving the workers it serves.

The fleet's workers are processes that get killed; the server they share must not die with
them, nor share their CPU time. This serves one emulator configured by the JSON argument and
a control route on the same server's loopback port:

- ``GET /report`` (on a control port of its own): every task (id, video, status, created) and
  every request (route, status sent, the task id of a query). The emulator answers 429 only
  for 1303 here (no faults are set), so a create answered 429 is a 1303.

The first line on stdout is the JSON of the emulator's URLs and keys. It ends when stdin
closes (its parent exited, whatever the way) or on SIGTERM.

    python -m tests.emulator_process '{"max_running": 20, "seconds": [0.2, 0.6]}'

``seconds``: each task takes a duration drawn uniformly from this range (seeded by the video
id, so every run gives a video the same), a fifth of it ``submitted``. ``list_mode`` as the
emulator's. ``callbacks``: true to post callbacks where a create carries a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
from typing import Any

from aiohttp import web

from kling_async.testing import EmulatedTask, KlingEmulator


async def serve(config: dict[str, Any]) -> None:
    low, high = config.get("seconds", [0.2, 0.6])

    def task_seconds(task: EmulatedTask) -> tuple[float, float]:
        total = random.Random(task.video_id).uniform(low, high)
        return total * 0.2, total * 0.8

    emulator = KlingEmulator(
        task_seconds=task_seconds,
        max_running=config.get("max_running"),
        list_mode=config.get("list_mode", "ok"),
    )

    async def report(_: web.Request) -> web.Response:
        tasks = [
            {
                "task_id": task.task_id,
                "video_id": task.video_id,
                "status": task.status,
                "created": task.created_at_ms / 1000,
            }
            for task in emulator.tasks.values()
        ]
        requests = [
            {
                "route": request.route,
                "status": request.status,
                "task_id": request.path.rpartition("/")[2] if request.route == "query" else None,
            }
            for request in emulator.requests
        ]
        return web.json_response({"tasks": tasks, "requests": requests})

    control = web.Application()
    control.router.add_get("/report", report)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with emulator:
        print(
            json.dumps(
                {
                    "base_url": emulator.base_url,
                    "gateway_url": emulator.gateway_url,
                    "access_key": emulator.access_key,
                    "secret_key": emulator.secret_key,
                    "api_key": emulator.api_key,
                    "report": f"http://{host}:{port}/report",
                }
            ),
            flush=True,
        )
        try:
            await until_stopped(signal.SIGTERM)
        finally:
            await runner.cleanup()


async def until_stopped(*signals: signal.Signals) -> None:
    """Return once stdin closes (the parent exited, whatever the way) or a signal comes."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def stdin_closed() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    watcher = asyncio.create_task(stdin_closed())
    try:
        await stop.wait()
    finally:
        watcher.cancel()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))
