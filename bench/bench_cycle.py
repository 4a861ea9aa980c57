"""Client CPU per request: kling_async against raw aiohttp, in one run, same emulator.

The emulator runs in a child process so that ``time.process_time()`` here counts only the
client's CPU. Each round opens both clients and runs N create+query cycles through raw
aiohttp (JSON in, dicts out) and through the SDK (validated request, typed models, retry
loop, limiter) in short chunks taken in turn (AB BA AB ..., a full garbage collection before
each), so that both see the same load of this machine at almost the same moments. The
figure is the median over rounds of each round's SDK / raw CPU ratio. The target (at
most 1.25x) holds one request at a time and sixteen at a time; the process exits 1 when it
is missed (see ``bench/_targets.py``).

    python bench/bench_cycle.py [--cycles 400] [--rounds 21] [--concurrency 1] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from _targets import Report

from kling_async import KlingSession

API_KEY = "bench-key"
PATH = "/v1/videos/video-extend"
TARGET = 1.25  # SDK CPU per request against raw aiohttp
DEFAULTS = {"cycles": 400, "rounds": 21}
CHUNK = 20  # cycles per turn of one client within a round


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


async def run_concurrently(
    cycle: Callable[[int], Awaitable[None]], numbers: range, width: int
) -> None:
    queue = iter(numbers)

    async def worker() -> None:
        for i in queue:
            await cycle(i)

    await asyncio.gather(*(worker() for _ in range(width)))


Cycle = Callable[[int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_client(base_url: str) -> AsyncIterator[Cycle]:
    """Create+query through raw aiohttp: JSON in, dicts out."""
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

        yield cycle


@contextlib.asynccontextmanager
async def sdk_client(base_url: str) -> AsyncIterator[Cycle]:
    """Create+query through the SDK."""
    async with KlingSession(API_KEY, base_url=base_url) as session:

        async def cycle(i: int) -> None:
            handle = await session.extend(f"vid-{i}", prompt="zoom")
            task = await handle.poll()
            assert task.status.value == "submitted"

        yield cycle


async def timed(cycle: Cycle, first: int, n: int, width: int) -> float:
    """Client CPU seconds for ``n`` cycles, ``width`` at a time, after a full collection."""
    gc.collect()
    started = time.process_time()
    await run_concurrently(cycle, range(first, first + n), width)
    return time.process_time() - started


async def one_round(base_url: str, cycles: int, width: int) -> tuple[float, float]:
    """CPU seconds of ``cycles`` raw and SDK cycles, in chunks taken in turn (AB BA AB ...).

    Both clients are open (and warm) for the whole round, and each chunk is short, so the
    two see the same load of this machine at almost the same moments.
    """
    chunk = max(CHUNK, 4 * width)
    raw = sdk = 0.0
    async with raw_client(base_url) as raw_cycle, sdk_client(base_url) as sdk_cycle:
        await raw_cycle(-1)  # warm the connection pools
        await sdk_cycle(-1)
        for index, first in enumerate(range(0, cycles, chunk)):
            n = min(chunk, cycles - first)
            if index % 2 == 0:
                raw += await timed(raw_cycle, first, n, width)
                sdk += await timed(sdk_cycle, first, n, width)
            else:
                sdk += await timed(sdk_cycle, first, n, width)
                raw += await timed(raw_cycle, first, n, width)
    return raw, sdk


async def main(cycles: int, rounds: int, width: int, record: bool) -> int:
    process, base_url = start_emulator()
    try:
        await one_round(base_url, cycles, width)  # warm-up, not counted: imports, caches
        raw: list[float] = []
        sdk: list[float] = []
        for _ in range(rounds):
            raw_seconds, sdk_seconds = await one_round(base_url, cycles, width)
            raw.append(raw_seconds)
            sdk.append(sdk_seconds)
    finally:
        process.terminate()
        process.wait()
    requests = cycles * 2
    raw_us = statistics.median(raw) / requests * 1e6
    sdk_us = statistics.median(sdk) / requests * 1e6
    ratios = sorted(s / r for s, r in zip(sdk, raw, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{cycles} create+query cycles x {rounds} rounds, concurrency {width}")
    print(f"raw aiohttp : {raw_us:7.1f} us client CPU per request (median)")
    print(f"kling_async : {sdk_us:7.1f} us client CPU per request (median)")
    print(
        f"ratio per round: quartiles {quartiles[0]:.3f} / {quartiles[1]:.3f} / {quartiles[2]:.3f}"
    )
    report = Report(
        f"cycle-{width}",
        settings={"cycles": cycles, "rounds": rounds, "concurrency": width},
        record=record,
    )
    report.figure("raw_us", round(raw_us, 1))
    report.figure("sdk_us", round(sdk_us, 1))
    report.figure("ratio_quartiles", [round(q, 3) for q in quartiles])
    report.check(
        f"CPU per request against raw aiohttp, {width} at a time",
        statistics.median(ratios),
        TARGET,
        unit="x",
        note=f"median of {rounds} paired rounds",
    )
    return report.finish()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=DEFAULTS["cycles"])
    parser.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write bench/results/cycle-N.json (default: only with the default cycles/rounds)",
    )
    args = parser.parse_args()
    record = args.record
    if record is None:
        record = {"cycles": args.cycles, "rounds": args.rounds} == DEFAULTS
    sys.exit(asyncio.run(main(args.cycles, args.rounds, args.concurrency, record)))
