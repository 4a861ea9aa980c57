"""Child process for the shared task states' tests: one process of a fleet waiting on tasks.

It opens one `KlingSession(fleet=...)` on the emulator given, waits on every task id given
(``session.task(id).wait()``, all at once) and prints one line per event:
``ready`` once its session is open, ``leads`` when it takes the lead of the fleet's polling
(from the SDK's log), ``done <id> <status>`` per finished task, ``all`` at the end.

    python -m tests.fleet_states_child CONFIG_JSON

CONFIG_JSON: {"base_url", "access_key", "secret_key", "redis", "ids": [...] or null to read
them (one JSON line) from stdin after ``ready``, "policy": {PollPolicy fields} or null for
the default}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from kling_async import KlingSession, PollPolicy, RetryPolicy


class _Leads(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if "leads the fleet's polling" in record.getMessage():
            print("leads", flush=True)


async def run(config: dict[str, Any]) -> None:
    policy = config.get("policy")
    session = KlingSession(
        access_key=config["access_key"],
        secret_key=config["secret_key"],
        base_url=config["base_url"],
        allow_insecure_http=True,
        fleet=config["redis"],
        poll_policy=PollPolicy(**policy) if policy else None,
        retry_policy=RetryPolicy.instant(),
    )

    async def wait(task_id: str) -> None:
        task = await session.task(task_id).wait(timeout=120)
        print(f"done {task.task_id} {task.status.value}", flush=True)

    async with session:
        print("ready", flush=True)
        ids = config["ids"]
        if ids is None:  # given on stdin once the parent made them
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            ids = json.loads(line)
        await asyncio.gather(*(wait(task_id) for task_id in ids))
    print("all", flush=True)


if __name__ == "__main__":
    logger = logging.getLogger("kling_async")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Leads())
    asyncio.run(run(json.loads(sys.argv[1])))
