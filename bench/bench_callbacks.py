"""Callback-to-wait latency: how soon a wait ends once Kling calls back that its task finished.

A `CallbackReceiver` is mounted in a real aiohttp.web application on loopback and the
emulator POSTs its callbacks there. Each round creates N tasks (finishing 4 ms apart, from
2.5 s after each create) with the default poll policy (so no poll ends a wait in time: the
callbacks and their confirming queries do), waits for all of them, and records, per task,
the time from its finish on the emulator to the return of its wait. Two ways of waiting are
measured: a gather of ``handle.wait()`` and one ``session.as_completed()``. The script exits
with status 1 when a p95 misses the target.

    python bench/bench_callbacks.py [--tasks 200] [--rounds 3] [--target 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import statistics
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web

from kling_async import CallbackReceiver, ExtendRequest, KlingSession, PollPolicy, TaskHandle
from kling_async.testing import EmulatedTask, KlingEmulator

MOUNT = "/kling/callbacks"


def timing(task: EmulatedTask) -> tuple[float, float]:
    """Processing after 0.5 s, done 2 s later plus 4 ms per task of the round: the finishes
    come after the creates, 250 a second, and the measure is not one of create contention."""
    return 0.5, 2.0 + (task.index % 1000) * 0.004


async def gather_round(session: KlingSession, count: int) -> dict[str, float]:
    """Each task created and waited on in its own task; when each wait returned."""
    returned: dict[str, float] = {}

    async def one(index: int) -> None:
        handle = await session.extend(f"vid-{index}")
        await handle.wait()
        returned[handle.task_id] = time.time()

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return returned


async def as_completed_round(session: KlingSession, count: int) -> dict[str, float]:
    """All tasks created with extend_many, then one as_completed over them."""
    made = await session.extend_many([ExtendRequest(video_id=f"vid-{i}") for i in range(count)])
    handles = [h for h in made if isinstance(h, TaskHandle)]
    if len(handles) != count:
        raise SystemExit(f"only {len(handles)} of {count} creates succeeded")
    returned: dict[str, float] = {}
    async for task in session.as_completed(handles):
        returned[task.task_id] = time.time()
    return returned


Round = Callable[[KlingSession, int], Awaitable[dict[str, float]]]


async def measure(run: Round, count: int) -> tuple[list[float], int]:
    """One round: the latency of each wait, and the most queries any task needed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        receiver = CallbackReceiver(f"http://127.0.0.1:{sock.getsockname()[1]}{MOUNT}")
        app = web.Application()
        app.add_subapp(MOUNT, receiver.aiohttp_app())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock, backlog=1024).start()
            async with (
                KlingEmulator(task_seconds=timing) as emu,
                KlingSession(
                    access_key=emu.access_key,
                    secret_key=emu.secret_key,
                    base_url=emu.base_url,
                    callbacks=receiver,
                    poll_policy=PollPolicy(),
                ) as session,
            ):
                with anyio.fail_after(120):
                    returned = await run(session, count)
                latencies = []
                for task_id, when in returned.items():
                    finished = emu.tasks[task_id].finishes_at
                    assert finished is not None
                    latencies.append(when - finished)
                queries = collections.Counter(
                    urllib.parse.unquote(r.path.rsplit("/", 1)[1])
                    for r in emu.requests
                    if r.route == "query"
                )
                return latencies, max(queries.values(), default=0)
        finally:
            await runner.cleanup()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


async def main(count: int, rounds: int, target: float) -> int:
    missed = False
    print(f"{count} tasks x {rounds} rounds; time from a task's finish to its wait's return")
    for name, run in (("gather of wait()", gather_round), ("as_completed()", as_completed_round)):
        latencies: list[float] = []
        most = 0
        for _ in range(rounds):
            measured, queries = await measure(run, count)
            latencies += measured
            most = max(most, queries)
        high = p95(latencies)
        verdict = "met" if high <= target else "MISSED"
        missed = missed or high > target
        print(
            f"{name:17}: p50 {statistics.median(latencies):6.3f} s  p95 {high:6.3f} s  "
            f"max {max(latencies):6.3f} s  (target p95 <= {target} s: {verdict}); "
            f"queries per task: at most {most}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.2, help="p95 latency in seconds")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.tasks, args.rounds, args.target)))
