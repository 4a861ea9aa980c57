"""Child process for ``bench_batch.py``: emulators with per-task durations and a control port.

The benchmark's client must not share a CPU with the server it measures, so the emulators run
here. A small control server on loopback makes them on demand and reports what they saw:

- ``POST /emulators`` ``{"list_mode": "ok" | "404", "durations": [[submitted, processing],
  ...], "max_running": N | null}`` starts a fresh `KlingEmulator` (with that parallel-task
  limit, if any); the task for video ``v-<i>`` takes
  ``durations[i]`` seconds (keyed by video, not creation order, so that concurrent creates and
  separate emulators give the same video the same schedule). Answers its name and URLs.
- ``GET /emulators/<name>`` answers every task (id, video, created, ``starts_at``,
  ``finishes_at``, status) and every request (arrival time, route, status sent, the task id
  of a query, the page number of a list read).
- ``DELETE /emulators/<name>`` closes it.

The first line on stdout is ``control: <url>``. The process ends when stdin closes (the parent
exited, whatever the way) or on SIGTERM/SIGINT.

    python bench/batch_emulator.py
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from kling_async.testing import EmulatedTask, KlingEmulator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.emulator_process import until_stopped


class StampedRequests(list):  # type: ignore[type-arg]  # holds RecordedRequest
    """`KlingEmulator.requests`, with the arrival time (``time.time()``) of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.time())
        super().append(item)


class Control:
    """The emulators this process serves, by name."""

    def __init__(self) -> None:
        self.emulators: dict[str, KlingEmulator] = {}
        self._names = itertools.count(1)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        durations = [(float(a), float(b)) for a, b in body["durations"]]

        def task_seconds(task: EmulatedTask) -> tuple[float, float]:
            _, _, index = task.video_id.rpartition("-")
            return durations[int(index) % len(durations)]

        emulator = KlingEmulator(
            task_seconds=task_seconds,
            list_mode=body.get("list_mode", "ok"),
            max_running=body.get("max_running"),
        )
        emulator.requests = StampedRequests()
        await emulator.start()
        name = str(next(self._names))
        self.emulators[name] = emulator
        return web.json_response(
            {
                "name": name,
                "base_url": emulator.base_url,
                "gateway_url": emulator.gateway_url,
                "api_key": emulator.api_key,
                "access_key": emulator.access_key,
                "secret_key": emulator.secret_key,
            }
        )

    async def report(self, request: web.Request) -> web.Response:
        emulator = self.emulators[request.match_info["name"]]
        tasks = [
            {
                "task_id": task.task_id,
                "video_id": task.video_id,
                "created": task.created_at_ms / 1000,
                "starts_at": task.starts_at,
                "finishes_at": task.finishes_at,
                "status": task.status,
            }
            for task in emulator.tasks.values()
        ]
        log = emulator.requests
        assert isinstance(log, StampedRequests)
        requests = {
            "time": log.times,
            "route": [r.route for r in log],
            "task_id": [r.path.rpartition("/")[2] if r.route == "query" else None for r in log],
            "status": [r.status for r in log],
            "page": [r.query.get("pageNum") if r.route == "list" else None for r in log],
        }
        return web.json_response({"tasks": tasks, "requests": requests})

    async def delete(self, request: web.Request) -> web.Response:
        emulator = self.emulators.pop(request.match_info["name"])
        await emulator.close()
        return web.json_response({})

    async def close(self) -> None:
        for emulator in self.emulators.values():
            await emulator.close()
        self.emulators.clear()


async def serve() -> None:
    control = Control()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/emulators", control.create)
    app.router.add_get("/emulators/{name}", control.report)
    app.router.add_delete("/emulators/{name}", control.delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"control: http://{host}:{port}", flush=True)

    try:
        await until_stopped(signal.SIGINT, signal.SIGTERM)
    finally:
        await control.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
