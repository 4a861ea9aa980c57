"""A child process for the fleet callback tests (run by tests/test_fleet_callbacks.py).

python tests/fleet_callbacks_child.py REDIS BASE ACCESS SECRET PUBLIC
    open a session with fleet=REDIS and a receiver of PUBLIC with fleet=REDIS (served by
    another process), extend once, print "task <id>", wait, then print the wait's end as
    JSON: {"status": ..., "ended": time.time(), "requests": n}
"""

from __future__ import annotations

import json
import sys
import time

import anyio

from kling_async import CallbackReceiver, KlingSession, PollPolicy, RetryPolicy


async def wait(redis: str, base: str, access: str, secret: str, public: str) -> None:
    receiver = CallbackReceiver(public, fleet=redis)
    try:
        async with KlingSession(
            access_key=access,
            secret_key=secret,
            base_url=base,
            fleet=redis,
            callbacks=receiver,
            poll_policy=PollPolicy(),  # default schedule: polls alone take 15 s and more
            retry_policy=RetryPolicy.instant(),
        ) as session:
            handle = await session.extend("vid-fleet")
            print(f"task {handle.task_id}", flush=True)
            with anyio.fail_after(20):
                task = await handle.wait()
            ended = time.time()
            stats = session.statistics()
            result = {"status": task.status.value, "ended": ended, "requests": stats.requests_sent}
            print(json.dumps(result), flush=True)
    finally:
        await receiver.aclose()


def main() -> None:
    redis, base, access, secret, public = sys.argv[1:6]
    anyio.run(wait, redis, base, access, secret, public)


if __name__ == "__main__":
    main()
