"""Client CPU per request: kling_async against raw aiohttp, in one run, same emulator.

The emulator runs in a child process so that ``time.process_time()`` here counts only the
client's CPU. Each round runs N create+query cycles through raw aiohttp (JSON in, dicts
out) and through the SDK (validated request, typed models, retry loop, limiter), one after
the other, alternating which goes first; the median over rounds is reported.

    python bench/bench_cycle.py [--cycles 500] [--rounds 21] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp

from kling_async import KlingSession

API_KEY = "bench-key"
PATH = "/v1/videos/video-extend"


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kling_async.testing",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--polls-to-start",
            "1000000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "gateway base URL:" in line:
            return process, line.split("gateway base URL:")[1].strip()
    process.kill()
    raise SystemExit("the emulator did not start")


async def run_concurrently(cycle: Callable[[int], Awaitable[None]], n: int, width: int) -> None:
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await cycle(i)

    await asyncio.gather(*(worker() for _ in range(width)))


async def raw_round(base_url: str, n: int, width: int) -> float:
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Accept": "application/json",
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:

        async def cycle(i: int) -> None:
            async with http.post(
                base_url + PATH, json={"video_id": f"vid-{i}", "prompt": "zoom"}, headers=headers
            ) as response:
                created = await response.json()
            task_id = created["data"]["task_id"]
            async with http.get(f"{base_url}{PATH}/{task_id}", headers=headers) as response:
                task = await response.json()
            assert task["data"]["task_status"] == "submitted"

        await cycle(-1)  # warm the connection pool
        started = time.process_time()
        await run_concurrently(cycle, n, width)
        return time.process_time() - started


async def sdk_round(base_url: str, n: int, width: int) -> float:
    async with KlingSession(API_KEY, base_url=base_url) as session:

        async def cycle(i: int) -> None:
            handle = await session.extend(f"vid-{i}", prompt="zoom")
            task = await handle.poll()
            assert task.status.value == "submitted"

        await cycle(-1)
        started = time.process_time()
        await run_concurrently(cycle, n, width)
        return time.process_time() - started


async def main(cycles: int, rounds: int, width: int) -> None:
    process, base_url = start_emulator()
    try:
        raw: list[float] = []
        sdk: list[float] = []
        for index in range(rounds):
            order = [(raw_round, raw), (sdk_round, sdk)]
            for run, into in order if index % 2 == 0 else reversed(order):
                into.append(await run(base_url, cycles, width))
    finally:
        process.terminate()
        process.wait()
    requests = cycles * 2
    raw_us = statistics.median(raw) / requests * 1e6
    sdk_us = statistics.median(sdk) / requests * 1e6
    # Each round pairs the two clients run back to back, so slow drifts of this machine's
    # speed cancel out in the per-round ratio; its median is the figure to compare.
    paired = statistics.median(s / r for s, r in zip(sdk, raw, strict=True))
    print(f"{cycles} create+query cycles x {rounds} rounds, concurrency {width}")
    print(f"raw aiohttp : {raw_us:7.1f} us client CPU per request (median)")
    print(f"kling_async : {sdk_us:7.1f} us client CPU per request (median)")
    print(f"ratio       : {paired:7.3f}x  median of paired rounds (target <= 1.25x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.rounds, args.concurrency))
