"""Child process for ``bench_fleet.py``: one process of a fleet (or the single process).

It opens one session, makes the keyed extends of its range (``v-<i>``, key ``k-<i>``), waits
on them (and, with ``wait_all``, on every task of the run once all are made: the fleet's
task ids come from the run's results directory) and prints one JSON line: when each task was
seen done (``time.time()``), when its creates started and ended, and its CPU time.

    python bench/fleet_client.py CONFIG_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from kling_async import KlingSession


async def run(config: dict[str, Any]) -> dict[str, Any]:
    session = KlingSession(
        access_key=config["access_key"],
        secret_key=config["secret_key"],
        base_url=config["base_url"],
        allow_insecure_http=True,
        fleet=config.get("redis"),
        max_parallel_tasks=config.get("limit"),
    )
    seen: dict[str, float] = {}
    mine: list[str] = []
    first, count = config["first"], config["count"]
    cpu = time.process_time()
    async with session:
        started = time.time()
        keyed = config.get("redis") is not None

        all_made = asyncio.Event()

        async def one(index: int) -> None:
            handle = await session.extend(
                video_id=f"v-{index}",
                prompt="bench",
                key=f"k-{index}" if keyed else None,
            )
            mine.append(handle.task_id)
            if len(mine) == count:
                all_made.set()
            task = await handle.wait()
            seen[task.task_id] = time.time()

        creates = [asyncio.ensure_future(one(i)) for i in range(first, first + count)]
        others: list[str] = []
        if config.get("wait_all"):
            # Publish this process's task ids, then wait on the whole run's too.
            await all_made.wait()
            others = await asyncio.to_thread(
                exchange_ids, Path(config["ids"]), first, mine, config["processes"]
            )

        async def other(task_id: str) -> None:
            task = await session.task(task_id).wait()
            seen.setdefault(task.task_id, time.time())

        await asyncio.gather(*creates, *(other(task_id) for task_id in others))
        ended = time.time()
        stats = session.statistics()
    return {
        "seen": seen,
        "mine": mine,
        "started": started,
        "ended": ended,
        "cpu": time.process_time() - cpu,
        "requests": stats.requests_sent,
    }


def exchange_ids(directory: Path, first: int, mine: list[str], processes: int) -> list[str]:
    """Write this process's task ids; once every process wrote its own, read theirs."""
    (directory / f"{first}.json").write_text(json.dumps(mine))
    while len(list(directory.glob("*.json"))) < processes:
        time.sleep(0.2)
    return [
        task_id
        for path in directory.glob("*.json")
        if path.name != f"{first}.json"
        for task_id in json.loads(path.read_text())
    ]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))), flush=True)
