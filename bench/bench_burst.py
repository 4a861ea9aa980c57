"""A burst of 1302s: how long the session takes to recover, and how many requests meet it.

100 waits poll tasks a minute old (so each polls every `PollPolicy.interval`, their polls
spread over one interval), with the default poll and retry policies through a gateway (one
query per wait, no list refresh). Then the emulator answers 1302 to every request for 2 s.
Measured: the time from the burst's end to the last wait done, and the requests that met the
burst. Exits non-zero when a target is missed.

    python bench/bench_burst.py [--waits 100] [--burst 2] [--runs 3] [--timeout 600]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import anyio

from kling_async import KlingError, KlingSession, PollPolicy, RetryPolicy, TaskHandle
from kling_async.testing import Fault, KlingEmulator

RECOVERY_TARGET = 10.0  # seconds from the burst's end to the last wait done
MET_TARGET = 100  # requests that meet the burst: fewer than this


async def one_run(waits: int, burst: float, timeout: float) -> tuple[float, int, int, int]:
    """(seconds from the burst's end to the last wait done, requests that met the burst,
    requests in all, waits done)."""
    async with KlingEmulator(polls_to_start=0, polls_to_finish=1) as emulator:
        emulator.clock = lambda: time.time() - 60  # the tasks look a minute old
        async with KlingSession(
            emulator.api_key,
            base_url=emulator.gateway_url,
            retry_policy=RetryPolicy.instant(),
            poll_policy=PollPolicy.instant(),
        ) as maker:
            ids = [(await maker.extend(f"vid-{n}")).task_id for n in range(waits)]
        async with KlingSession(
            emulator.api_key, base_url=emulator.gateway_url, list_refresh=False
        ) as session:
            interval = PollPolicy().interval
            handles = [session.task(task_id) for task_id in ids]
            done_at: list[float] = []
            burst_end = 0.0
            emulator.requests.clear()

            async def wait(handle: TaskHandle) -> None:
                try:
                    await handle.wait()
                except KlingError as error:  # counted as not done
                    print(f"a wait failed: {error!r}")
                else:
                    done_at.append(anyio.current_time())

            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as group:
                    for handle in handles:  # the first polls spread over one interval
                        group.start_soon(wait, handle)
                        await anyio.sleep(interval / waits)
                    # Each wait's second poll is due about one interval after its first:
                    # the burst meets them mid-cycle, as it would meet a session at work.
                    emulator.inject(Fault.rate_limited(1302), route="any", seconds=burst)
                    burst_end = anyio.current_time() + burst
            met = sum(1 for r in emulator.requests if r.fault is not None)
            recovery = max(done_at) - burst_end if len(done_at) == waits else float("inf")
            return recovery, met, len(emulator.requests), len(done_at)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=100)
    parser.add_argument("--burst", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    missed = False
    print(
        f"{args.waits} polling waits, default policies, 1302 to every request for {args.burst:g} s"
    )
    for run in range(1, args.runs + 1):
        recovery, met, sent, done = await one_run(args.waits, args.burst, args.timeout)
        late = not recovery <= RECOVERY_TARGET
        many = not met < MET_TARGET
        missed = missed or late or many
        print(
            f"run {run}: burst end -> last wait done {recovery:6.2f} s "
            f"(target <= {RECOVERY_TARGET:g} s: {'MISSED' if late else 'met'}); "
            f"requests that met the burst {met} (target < {MET_TARGET}: "
            f"{'MISSED' if many else 'met'}); requests in all {sent}; "
            f"waits done {done}/{args.waits}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
