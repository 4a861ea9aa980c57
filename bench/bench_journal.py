"""What the journal adds to one keyed create: claim + mark_sending + mark_created.

Each round journals N new keys one after the other on a fresh file in a temporary
directory (the file system the journal would live on matters: run it where yours will) and
reports the median over rounds of the wall and CPU time (all threads) per keyed create, for
``synchronous=NORMAL`` (survives a killed process, the default) and ``FULL`` (fsync per
step, survives power loss).
A bare thread hop (``anyio.to_thread.run_sync`` of a no-op, three per create) is shown for
scale: most of the cost is getting off the event loop and back.

The target: at most 2 ms of wall time per keyed create with ``NORMAL``, that is at most 1 %
of a real create (hundreds of milliseconds). ``FULL`` depends on the disk's fsync and has
no target. The process exits 1 when the target is missed (see ``bench/_targets.py``).

    python bench/bench_journal.py [--creates 500] [--rounds 7] [--dir DIR] [--record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import statistics
import sys
import tempfile
import time

import anyio
import anyio.to_thread
from _targets import Report

from kling_async._journal import ClaimOutcome
from kling_async._sqlite_journal import SQLiteJournal
from kling_async.models import ExtendRequest

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TARGET_MS = 2.0  # wall time per keyed create with synchronous=NORMAL
DEFAULTS = {"creates": 500, "rounds": 7}


async def keyed_creates(path: pathlib.Path, creates: int, synchronous: str) -> tuple[float, float]:
    """Wall and CPU seconds per claim+mark_sending+mark_created, on a new journal file."""
    async with SQLiteJournal(path, synchronous=synchronous) as journal:  # type: ignore[arg-type]
        requests = [ExtendRequest(video_id=f"video-{i}", prompt="bench") for i in range(creates)]
        started, cpu = time.perf_counter(), time.process_time()
        for index, request in enumerate(requests):
            key = f"row-{index}"
            claim = await journal.claim(key, request, now=NOW, stamp=f"kling-async-{index}")
            assert claim.outcome is ClaimOutcome.FRESH
            await journal.mark_sending(key, NOW)
            await journal.mark_created(key, f"task-{index}")
        wall = (time.perf_counter() - started) / creates
        return wall, (time.process_time() - cpu) / creates


async def thread_hops(count: int) -> float:
    limiter = anyio.CapacityLimiter(1)
    started = time.perf_counter()
    for _ in range(count):
        await anyio.to_thread.run_sync(lambda: None, limiter=limiter)
    return (time.perf_counter() - started) / count


async def main(creates: int, rounds: int, directory: str | None, record: bool) -> int:
    report = Report("journal", settings={"creates": creates, "rounds": rounds}, record=record)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        for synchronous in ("NORMAL", "FULL"):
            times = [
                await keyed_creates(
                    pathlib.Path(scratch) / f"{synchronous}-{n}.db", creates, synchronous
                )
                for n in range(rounds)
            ]
            wall = statistics.median(wall for wall, _ in times) * 1e6
            cpu = statistics.median(cpu for _, cpu in times) * 1e6
            print(
                f"synchronous={synchronous:<6} {wall:6.0f} µs wall, {cpu:6.0f} µs CPU per keyed"
                f" create (claim + mark_sending + mark_created; median of {rounds} x {creates})"
            )
            report.figure(f"{synchronous.lower()}_wall_us", round(wall))
            report.figure(f"{synchronous.lower()}_cpu_us", round(cpu))
    hop = statistics.median([await thread_hops(creates) for _ in range(rounds)])
    print(f"for scale: one thread hop {hop * 1e6:.0f} µs (a keyed create makes three)")
    report.figure("thread_hop_us", round(hop * 1e6))
    report.check(
        "wall time per keyed create, synchronous=NORMAL",
        report.figures["normal_wall_us"] / 1000,
        TARGET_MS,
        unit=" ms",
        digits=2,
    )
    return report.finish()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=DEFAULTS["creates"])
    parser.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    parser.add_argument("--dir", default=None, help="where the journal files go (default: tmp)")
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write bench/results/journal.json (default: only with the default settings)",
    )
    options = parser.parse_args()
    record = options.record
    if record is None:
        record = {"creates": options.creates, "rounds": options.rounds} == DEFAULTS
    sys.exit(anyio.run(main, options.creates, options.rounds, options.dir, record))
