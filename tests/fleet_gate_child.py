"""A child process for the fleet gate's multi-process tests (run by tests/test_fleet_gate.py).

python tests/fleet_gate_child.py extend BASE REDIS TAG COUNT LIMIT WORKERS
    after "go" on stdin, make COUNT extends (videos TAG-0...) with WORKERS side by side, each
    waited to its end; print {"made": [task ids], "round_trips": gate scripts run} as JSON
python tests/fleet_gate_child.py hold BASE REDIS COUNT BOUND_TTL
    make COUNT extends without waiting, print their task ids as JSON, then wait to be killed

LIMIT is the session's max_parallel_tasks ("none" to learn it). The emulator's keys are its
defaults (tests/helpers.py).
"""

from __future__ import annotations

import json
import sys

import anyio

from kling_async import KlingSession, PollPolicy, RetryPolicy, _redis_gate


def session(base: str, redis_url: str, limit: int | None) -> KlingSession:
    return KlingSession(
        access_key="test-access-key",
        secret_key="test-secret-key",
        base_url=base,
        fleet=redis_url,
        max_parallel_tasks=limit,
        poll_policy=PollPolicy.instant(),
        retry_policy=RetryPolicy(),  # a busy account: the default 1303 waits
    )


async def extend(
    base: str, redis_url: str, tag: str, count: int, limit: int | None, workers: int
) -> None:
    made: list[str] = []
    async with session(base, redis_url, limit) as opened:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "go": all start together
        todo = iter(range(count))

        async def worker() -> None:
            for index in todo:
                handle = await opened.extend(video_id=f"{tag}-{index}", prompt="fleet gate")
                task = await handle.wait(timeout=120)
                made.append(task.task_id)

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker)
        trips = opened._gate.round_trips  # type: ignore[attr-defined]
    print(json.dumps({"made": made, "round_trips": trips}), flush=True)


async def hold(base: str, redis_url: str, count: int, bound_ttl: float) -> None:
    _redis_gate.BOUND_TTL = bound_ttl  # the test's short TTL: its slots outlive it so long
    async with session(base, redis_url, None) as opened:
        made = []
        for index in range(count):
            handle = await opened.extend(video_id=f"held-{index}", prompt="fleet gate")
            made.append(handle.task_id)
        print(json.dumps(made), flush=True)
        await anyio.sleep_forever()


def main() -> None:
    mode, base, redis_url, *rest = sys.argv[1:]
    if mode == "extend":
        tag, count, limit, workers = rest
        anyio.run(
            extend,
            base,
            redis_url,
            tag,
            int(count),
            None if limit == "none" else int(limit),
            int(workers),
        )
    elif mode == "hold":
        count, ttl = rest
        anyio.run(hold, base, redis_url, int(count), float(ttl))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
