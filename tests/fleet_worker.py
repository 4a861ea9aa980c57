"""Child process for the fleet's tests: one worker of a fleet, like a web or queue worker.

It opens one `KlingSession(fleet=...)` on the emulator given, makes a keyed extend of video
``v-<i>`` for each ``i`` of its range (key ``k-<i>``), waits for each task and appends
``k-<i> <task id> <status>`` to the results file (one line, flushed, per finished key). Run
again on the same range it continues: keys made before are not made again.

    python -m tests.fleet_worker CONFIG_JSON

CONFIG_JSON: {"base_url", "access_key", "secret_key", "redis", "first", "count",
"results", "limit" (max_parallel_tasks or null), "policy": "default" | "instant",
"concurrency", "wait_ids": [task ids to wait on instead of creating]}.
Prints ``ready`` once its session is open, ``done`` when every key finished. A create
refused because the fleet's Redis is away (`FleetUnavailableError`, nothing sent) is tried
again after half a second, as a job queue would run the job again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, TextIO

from kling_async import (
    FleetUnavailableError,
    JournalError,
    KlingSession,
    PollPolicy,
    RetryPolicy,
)


async def run(config: dict[str, Any], results: TextIO) -> None:
    instant = config.get("policy") == "instant"
    session = KlingSession(
        access_key=config["access_key"],
        secret_key=config["secret_key"],
        base_url=config["base_url"],
        allow_insecure_http=True,
        fleet=config["redis"],
        max_parallel_tasks=config.get("limit"),
        poll_policy=PollPolicy.instant() if instant else None,
        retry_policy=RetryPolicy.instant() if instant else None,
    )
    gate = asyncio.Semaphore(int(config.get("concurrency", 1000)))

    def record(line: str) -> None:
        results.write(line + "\n")
        results.flush()
        os.fsync(results.fileno())

    async def one(index: int) -> None:
        for _ in range(120):  # as a job queue would: a job that failed runs again, same key
            try:
                async with gate:
                    handle = await session.extend(
                        video_id=f"v-{index}", prompt=f"fleet {index}", key=f"k-{index}"
                    )
                task = await handle.wait()
                break
            except (FleetUnavailableError, JournalError) as error:
                print(f"k-{index}: {type(error).__name__}: {error}", file=sys.stderr)
                await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"k-{index}: the fleet's Redis stayed away")
        record(f"k-{index} {task.task_id} {task.status.value}")

    async def watch(task_id: str) -> None:
        task = await session.task(task_id).wait()
        record(f"{task_id} {task.task_id} {task.status.value}")

    async with session:
        print("ready", flush=True)
        first, count = int(config.get("first", 0)), int(config.get("count", 0))
        jobs = [one(i) for i in range(first, first + count)]
        jobs += [watch(task_id) for task_id in config.get("wait_ids", [])]
        await asyncio.gather(*jobs)
    print("done", flush=True)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    with open(settings["results"], "a", encoding="utf-8") as file:
        asyncio.run(run(settings, file))
