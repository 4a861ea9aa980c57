"""Waiting at scale: requests, detection latency, wall time, CPU and memory (issue 8).

One process run. The emulators run in a child process (``bench/batch_emulator.py``), so that
``time.process_time()`` here counts only the client. Every task ``v-<i>`` takes a duration
drawn uniformly from ``--min``..``--max`` seconds with ``--seed`` (the same for every mode),
of which a share drawn uniformly from 10-20 % is spent ``submitted`` and the rest
``processing``. Each mode runs against a fresh emulator, one mode after the other:

- ``naive``: raw aiohttp; creates with ``gather``, then every task is queried every 1 s (one
  second between a reply and the next query), through one connector of 32 connections (the
  SDK's ``max_in_flight``), at the gateway URL.
- ``gateway-gather`` / ``gateway-as-completed``: the SDK at the gateway URL (``/kling``) of an
  emulator whose list route answers 404 (``list_mode="404"``), default policies; the session
  finds out by itself that there is no list. Creates with ``gather(session.extend(...))``,
  waits with ``gather(handle.wait())`` or ``session.as_completed(handles)``.
- ``list-gather`` / ``list-as-completed``: the same at the official-style base URL with an
  access key and secret key, the list route available.
- ``coalescing``: 10 tasks with one waiter each against 10 tasks with 100 waiters each (and
  100 handles each from ``session.task(id)``), each set on an emulator of its own, side by
  side; in gateway mode, and in list mode.
- ``memory``: tracemalloc over 1,000 pending waits (and over handles without a wait), on tasks
  that do not finish during the measurement; separate from the timed modes.

Detection latency is the time the client saw a task done (``time.time()`` when its wait
returned, as_completed yielded it, or the naive poll read it) minus the emulator's
``finishes_at`` for it: the same machine's clock on both sides. The details split it into
"finish to first look" (the first query of the task, or list page read, after its finish,
by the emulator's arrival stamps) and "look to waiter" (from there to the client). Wall
time runs from the first create to the last task collected; the target compares it with
1.1 x the longest task's duration plus the time the creates took.

    python bench/bench_batch.py [--tasks 1000] [--min 30] [--max 90] [--seed 1]
                                [--modes naive,gateway-gather,...] [--json [PATH]]

A quick development run: ``--tasks 200 --min 5 --max 15``. The default run takes about ten
minutes (each timed mode a little more than the longest task). Each target's figure is
printed beside it; the process exits 1 when one is missed, and a run with the default
settings records its figures in ``bench/results/batch.json`` (see ``bench/_targets.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import itertools
import json
import math
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from _targets import Report

from kling_async import KlingSession, TaskHandle, WaitTimeoutError

PATH = "/v1/videos/video-extend"
MAX_IN_FLIGHT = 32  # the SDK's default; the naive poller gets the same connection limit
DONE = ("succeed", "failed")
TIMED_MODES = (
    "naive",
    "gateway-gather",
    "gateway-as-completed",
    "list-gather",
    "list-as-completed",
)
MODES = (*TIMED_MODES, "coalescing", "memory")
SUBMITTED_SHARE = (0.10, 0.20)
COALESCE_TASKS = 10
COALESCE_WAITERS = 100
MEMORY_WAITS = 1000

# Targets of issue 8, "Benchmark and targets".
LIST_NON_CREATE_PER_TASK = 0.1
LIST_P95 = 2.0
GATEWAY_GET_SHARE = 0.25
GATEWAY_P95 = 3.0
GATEWAY_WALL_FACTOR = 1.1
COALESCE_EXTRA_GETS = 10
WAIT_BYTES = 3 * 1024
HANDLE_BYTES = 100


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def draw_durations(n: int, low: float, high: float, seed: int) -> list[tuple[float, float]]:
    """Per video ``v-<i>``: (seconds submitted, seconds processing), uniform in total."""
    rng = random.Random(seed)
    durations = []
    for _ in range(n):
        total = rng.uniform(low, high)
        share = rng.uniform(*SUBMITTED_SHARE)
        durations.append((total * share, total * (1 - share)))
    return durations


# -- the child process ---------------------------------------------------------------------


class Child:
    """The emulator process and its control port (used only outside the timed sections)."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("batch_emulator.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("control: "):
            self.process.kill()
            raise SystemExit("the emulator process did not start")
        self.url = line.split("control: ", 1)[1].strip()
        self.http: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        async with self.http.request(method, self.url + path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def emulator(
        self, list_mode: str, durations: list[tuple[float, float]], max_running: int | None = None
    ) -> Any:
        return await self._call(
            "POST",
            "/emulators",
            {"list_mode": list_mode, "durations": durations, "max_running": max_running},
        )

    async def report(self, emulator: Any) -> Any:
        return await self._call("GET", f"/emulators/{emulator['name']}")

    async def close_emulator(self, emulator: Any) -> None:
        await self._call("DELETE", f"/emulators/{emulator['name']}")

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.close()
        assert self.process.stdin is not None
        self.process.stdin.close()  # the child ends when its stdin closes
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait()


# -- measuring -----------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = share * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def analyse(
    name: str,
    report: Any,
    *,
    n: int,
    started: float,
    submitted: float,
    ended: float,
    cpu: float,
    seen: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The figures of one timed mode, and where its requests and its latency went."""
    tasks = {task["task_id"]: task for task in report["tasks"]}
    requests = report["requests"]
    routes = Counter(requests["route"])
    latencies = {
        task_id: at - tasks[task_id]["finishes_at"]
        for task_id, at in seen.items()
        if task_id in tasks
    }
    values = list(latencies.values())
    longest = max(task["finishes_at"] - task["created"] for task in tasks.values())
    last_finish = max(task["finishes_at"] for task in tasks.values())
    gets = routes["query"] + routes["list"]

    # Where the requests went: every look at each task, before and after it finished.
    queries: dict[str, list[float]] = {task_id: [] for task_id in tasks}
    list_times: list[float] = []  # list pages that answered (a 404 shows no task)
    for at, route, task_id, status in zip(
        requests["time"], requests["route"], requests["task_id"], requests["status"], strict=True
    ):
        if route == "query" and task_id in queries:
            queries[task_id].append(at)
        elif route == "list" and status == 200:
            list_times.append(at)
    list_times.sort()
    before = after = 0
    first_look: dict[str, float] = {}
    for task_id, times in queries.items():
        finish = tasks[task_id]["finishes_at"]
        late = [at for at in times if at >= finish]
        before += len(times) - len(late)
        after += len(late)
        looks = [*late[:1], *_first_at_or_after(list_times, finish)]
        if looks:
            first_look[task_id] = min(looks)
    # Latency split: server side (finish to the first look after it) and client side (that
    # look to the moment the waiter had it).
    server_side = [first_look[t] - tasks[t]["finishes_at"] for t in latencies if t in first_look]
    client_side = [seen[t] - first_look[t] for t in latencies if t in first_look]

    # Requests over time, per 10 s from the first create.
    timeline: dict[int, Counter[str]] = {}
    for at, route in zip(requests["time"], requests["route"], strict=True):
        timeline.setdefault(int((at - started) // 10), Counter())[route] += 1
    # Queries by the task's age at the time, per 10 s: the shape of the schedule.
    by_age: Counter[int] = Counter()
    for task_id, times in queries.items():
        for at in times:
            by_age[int((at - tasks[task_id]["created"]) // 10)] += 1
    # The k-th query of each task at which age: the schedule as the tasks saw it.
    query_ages = []
    for k in range(6):
        ages = [
            times[k] - tasks[task_id]["created"]
            for task_id, times in queries.items()
            if len(times) > k
        ]
        query_ages.append(
            {
                "k": k + 1,
                "tasks": len(ages),
                "p10": percentile(ages, 0.1),
                "p50": percentile(ages, 0.5),
                "p90": percentile(ages, 0.9),
            }
        )
    # List refreshes: a round starts with page 1; the gaps between rounds.
    round_starts = sorted(
        at for at, page in zip(requests["time"], requests["page"], strict=True) if page in ("1", 1)
    )
    gaps = [b - a for a, b in itertools.pairwise(round_starts)]
    # Latency by task duration, in four bands.
    durations = {t: tasks[t]["finishes_at"] - tasks[t]["created"] for t in tasks}
    bands = _bands(durations, latencies)
    worst = sorted(latencies, key=latencies.__getitem__, reverse=True)[:5]
    return {
        "mode": name,
        "tasks": n,
        "collected": len(values),
        "requests": dict(routes),
        "per_task": {
            "create": routes["create"] / n,
            "query": routes["query"] / n,
            "list": routes["list"] / n,
            "non_create": gets / n,
        },
        "gets": gets,
        "latency": {
            "p50": percentile(values, 0.50),
            "p95": percentile(values, 0.95),
            "max": max(values, default=None),
            "server_side_p50": percentile(server_side, 0.50),
            "server_side_p95": percentile(server_side, 0.95),
            "client_side_p50": percentile(client_side, 0.50),
            "client_side_p95": percentile(client_side, 0.95),
            "by_duration": bands,
        },
        "submit_seconds": submitted - started,
        "wall_seconds": ended - started,
        "longest_task_seconds": longest,
        "last_finish_after_start": last_finish - started,
        "wall_target_seconds": GATEWAY_WALL_FACTOR * longest + (submitted - started),
        "cpu_seconds": cpu,
        "cpu_ms_per_task": cpu / n * 1000,
        "queries_before_finish_per_task": before / n,
        "queries_after_finish_per_task": after / n,
        "query_ages": query_ages,
        "list_rounds": {
            "rounds": len(round_starts),
            "pages": routes["list"],
            "gap_p10": percentile(gaps, 0.1),
            "gap_p50": percentile(gaps, 0.5),
            "gap_p90": percentile(gaps, 0.9),
            "gaps_under_1s": sum(gap < 1.0 for gap in gaps),
        },
        "timeline_10s": {str(k): dict(v) for k, v in sorted(timeline.items())},
        "queries_by_age_10s": {str(k): v for k, v in sorted(by_age.items())},
        "latest": [
            {
                "task_id": t,
                "duration": durations[t],
                "latency": latencies[t],
                "queries": len(queries[t]),
            }
            for t in worst
        ],
        **(extra or {}),
    }


def _first_at_or_after(ordered: list[float], moment: float) -> list[float]:
    index = bisect.bisect_left(ordered, moment)
    return ordered[index : index + 1]


def _bands(durations: dict[str, float], latencies: dict[str, float]) -> list[dict[str, Any]]:
    if not latencies:
        return []
    low, high = min(durations.values()), max(durations.values())
    width = (high - low) / 4 or 1.0
    groups: list[list[float]] = [[], [], [], []]
    for task_id, latency in latencies.items():
        groups[min(3, int((durations[task_id] - low) // width))].append(latency)
    return [
        {
            "from": low + i * width,
            "to": low + (i + 1) * width,
            "tasks": len(group),
            "p50": percentile(group, 0.5),
            "p95": percentile(group, 0.95),
        }
        for i, group in enumerate(groups)
    ]


# -- the timed modes -------------------------------------------------------------------------


async def run_naive(child: Child, durations: list[tuple[float, float]], n: int) -> dict[str, Any]:
    emulator = await child.emulator("404", durations)
    base = emulator["gateway_url"]
    headers = {"Authorization": f"Bearer {emulator['api_key']}", "Accept": "application/json"}
    bound = max(total for total in map(sum, durations[:n])) + 60
    seen: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def create(i: int) -> str:
            body = {"video_id": f"v-{i}", "prompt": "zoom"}
            async with http.post(base + PATH, json=body, headers=headers) as response:
                created = await response.json()
            return str(created["data"]["task_id"])

        async def poll(task_id: str, deadline: float) -> None:
            while time.time() < deadline:
                await asyncio.sleep(1.0)
                async with http.get(f"{base}{PATH}/{task_id}", headers=headers) as response:
                    task = await response.json()
                if task["data"]["task_status"] in DONE:
                    seen[task_id] = time.time()
                    return

        started, cpu = time.time(), time.process_time()
        ids = await asyncio.gather(*(create(i) for i in range(n)))
        submitted = time.time()
        await asyncio.gather(*(poll(task_id, submitted + bound) for task_id in ids))
        ended, cpu = time.time(), time.process_time() - cpu
    report = await child.report(emulator)
    await child.close_emulator(emulator)
    return analyse(
        "naive", report, n=n, started=started, submitted=submitted, ended=ended, cpu=cpu, seen=seen
    )


def sdk_session(emulator: Any, *, list_mode: bool) -> KlingSession:
    if list_mode:  # official style: access key + secret key, the list route offered
        return KlingSession(
            access_key=emulator["access_key"],
            secret_key=emulator["secret_key"],
            base_url=emulator["base_url"],
        )
    return KlingSession(emulator["api_key"], base_url=emulator["gateway_url"])


async def run_sdk(
    child: Child, durations: list[tuple[float, float]], n: int, *, list_mode: bool, waiting: str
) -> dict[str, Any]:
    emulator = await child.emulator("ok" if list_mode else "404", durations)
    bound = max(total for total in map(sum, durations[:n])) + 60
    seen: dict[str, float] = {}
    timed_out = 0
    async with sdk_session(emulator, list_mode=list_mode) as session:

        async def wait(handle: TaskHandle) -> None:
            nonlocal timed_out
            try:
                await handle.wait(timeout=bound)
            except WaitTimeoutError:
                timed_out += 1
            else:
                seen[handle.task_id] = time.time()

        started, cpu = time.time(), time.process_time()
        handles = await asyncio.gather(*(session.extend(f"v-{i}") for i in range(n)))
        submitted = time.time()
        if waiting == "gather":
            await asyncio.gather(*(wait(handle) for handle in handles))
        else:
            try:
                async for task in session.as_completed(handles, timeout=bound):
                    seen[task.task_id] = time.time()
            except WaitTimeoutError as error:
                timed_out = len(error.pending or ())
        ended, cpu = time.time(), time.process_time() - cpu
        stats = session.statistics()
    report = await child.report(emulator)
    await child.close_emulator(emulator)
    name = f"{'list' if list_mode else 'gateway'}-{waiting.replace('_', '-')}"
    return analyse(
        name,
        report,
        n=n,
        started=started,
        submitted=submitted,
        ended=ended,
        cpu=cpu,
        seen=seen,
        extra={
            "timed_out": timed_out,
            "statistics": {
                "requests_sent": stats.requests_sent,
                "retries": stats.retries,
                "list_requests": stats.list_requests,
                "list_refresh": stats.list_refresh,
                "rate_limit": stats.rate_limit,
            },
        },
    )


# -- coalescing ----------------------------------------------------------------------------


async def run_coalescing(child: Child, durations: list[tuple[float, float]]) -> dict[str, Any]:
    """Sets of 10 tasks, each on an emulator of its own, all side by side."""
    variants = [
        ("gateway", "one waiter"),
        ("gateway", "100 waiters"),
        ("gateway", "100 handles"),
        ("list", "one waiter"),
        ("list", "100 waiters"),
    ]
    bound = max(map(sum, durations[:COALESCE_TASKS])) + 60

    async def variant(mode: str, shape: str) -> dict[str, Any]:
        emulator = await child.emulator("ok" if mode == "list" else "404", durations)
        async with sdk_session(emulator, list_mode=mode == "list") as session:
            handles = await asyncio.gather(
                *(session.extend(f"v-{i}") for i in range(COALESCE_TASKS))
            )
            waits: list[Awaitable[Any]] = []
            for handle in handles:
                if shape == "one waiter":
                    waits.append(handle.wait(timeout=bound))
                elif shape == "100 waiters":
                    waits += [handle.wait(timeout=bound) for _ in range(COALESCE_WAITERS)]
                else:
                    waits += [
                        session.task(handle.task_id).wait(timeout=bound)
                        for _ in range(COALESCE_WAITERS)
                    ]
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
        report = await child.report(emulator)
        await child.close_emulator(emulator)
        routes = Counter(report["requests"]["route"])
        return {
            "mode": mode,
            "shape": shape,
            "waiters": len(waits),
            "failed_waits": sum(isinstance(outcome, BaseException) for outcome in outcomes),
            "query": routes["query"],
            "list": routes["list"],
            "gets": routes["query"] + routes["list"],
        }

    results = await asyncio.gather(*(variant(mode, shape) for mode, shape in variants))
    for result in results:
        single = next(
            r["gets"] for r in results if r["mode"] == result["mode"] and r["shape"] == "one waiter"
        )
        result["extra_gets"] = result["gets"] - single
    return {"mode": "coalescing", "variants": results}


# -- memory --------------------------------------------------------------------------------


async def traced(action: Callable[[], Awaitable[Any]]) -> tuple[int, Any, tracemalloc.Snapshot]:
    """Bytes still allocated after ``action``, what it returned, and a snapshot of them."""
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = await action()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return after - before, kept, snapshot


def top_allocations(
    snapshot: tracemalloc.Snapshot, key: str, count: int, per: int
) -> list[dict[str, Any]]:
    """Where the bytes a measurement kept were allocated, per file or per line."""
    rows = []
    for stat in snapshot.statistics(key)[:count]:
        frame = stat.traceback[0]
        where = "/".join(Path(frame.filename).parts[-2:])
        if key == "lineno":
            where += f":{frame.lineno}"
        rows.append({"where": where, "bytes_per_wait": stat.size / per})
    return rows


async def run_memory(child: Child) -> dict[str, Any]:
    """tracemalloc over 1,000 pending waits, on tasks that do not finish meanwhile."""
    n = MEMORY_WAITS
    emulator = await child.emulator("404", [(3600.0, 3600.0)])
    result: dict[str, Any] = {"mode": "memory", "waits": n}
    async with KlingSession(emulator["api_key"], base_url=emulator["gateway_url"]) as session:
        handles = await asyncio.gather(*(session.extend(f"v-{i}") for i in range(n)))
        # The first poll of a new task is 10 s away (PollPolicy.first_delay): nothing below
        # sends a request, so only what a wait keeps is counted.

        async def more_handles() -> list[TaskHandle]:
            return [session.task(handle.task_id) for handle in handles]

        size, kept, _ = await traced(more_handles)
        result["handle_bytes"] = size / n  # one more handle of a task the session knows
        del kept

        async def new_states() -> list[TaskHandle]:
            return [session.task(str(10**17 + i)) for i in range(n)]

        size, kept, _ = await traced(new_states)
        result["handle_with_state_bytes"] = size / n  # a handle of an id not seen before
        del kept

        async def run_waits(make: Callable[[], list[asyncio.Task[Any]]], pending: int) -> Any:
            jobs = make()
            for _ in range(1000):
                await asyncio.sleep(0)
                if session.statistics().waits_pending >= pending:
                    break
            await asyncio.sleep(0.01)  # let every wait settle into its doze
            return jobs

        async def cancel(jobs: list[asyncio.Task[Any]]) -> None:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

        def waits() -> list[asyncio.Task[Any]]:
            return [asyncio.ensure_future(handle.wait()) for handle in handles]

        size, jobs, snapshot = await traced(lambda: run_waits(waits, n))
        assert session.statistics().waits_pending == n, session.statistics()
        result["wait_bytes"] = size / n
        result["wait_by_file"] = top_allocations(snapshot, "filename", 8, n)
        result["wait_by_line"] = top_allocations(snapshot, "lineno", 12, n)
        await cancel(jobs)

        async def consume() -> None:
            async for _ in session.as_completed(handles):
                pass

        size, jobs, snapshot = await traced(
            lambda: run_waits(lambda: [asyncio.ensure_future(consume())], 1)
        )
        result["as_completed_bytes_per_task"] = size / n
        await cancel(jobs)

        def sleeps() -> list[asyncio.Task[Any]]:
            return [asyncio.ensure_future(asyncio.sleep(3600)) for _ in range(n)]

        size, jobs, _ = await traced(lambda: run_waits(sleeps, 0))
        result["bare_sleep_task_bytes"] = size / n  # the floor: an asyncio task asleep
        await cancel(jobs)
        assert session.statistics().requests_sent == n, "a poll was sent while measuring"
    await child.close_emulator(emulator)
    return result


# -- the report ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue with the figure measured for it."""
    rows: list[dict[str, Any]] = []
    naive = results.get("naive")
    for name in ("list-gather", "list-as-completed"):
        mode = results.get(name)
        if mode is None:
            continue
        value = mode["per_task"]["non_create"]
        rows.append(
            {
                "mode": name,
                "figure": "non-create requests / task",
                "value": fmt(value, ".3f"),
                "target": f"<= {LIST_NON_CREATE_PER_TASK}",
                "ok": value <= LIST_NON_CREATE_PER_TASK,
            }
        )
        p95 = mode["latency"]["p95"]
        rows.append(
            {
                "mode": name,
                "figure": "p95 detection latency",
                "value": f"{fmt(p95)} s",
                "target": f"<= {LIST_P95:g} s",
                "ok": p95 is not None and p95 <= LIST_P95,
            }
        )
    for name in ("gateway-gather", "gateway-as-completed"):
        mode = results.get(name)
        if mode is None:
            continue
        if naive is not None:
            share = mode["gets"] / naive["gets"]
            value = f"{share:.3f}x ({mode['gets']} vs {naive['gets']})"
            ok: bool | None = share <= GATEWAY_GET_SHARE
        else:
            value, ok = f"{mode['gets']} GETs (no naive run)", None
        rows.append(
            {
                "mode": name,
                "figure": "GETs vs naive poller",
                "value": value,
                "target": f"<= {GATEWAY_GET_SHARE}x",
                "ok": ok,
            }
        )
        p95 = mode["latency"]["p95"]
        rows.append(
            {
                "mode": name,
                "figure": "p95 detection latency",
                "value": f"{fmt(p95)} s",
                "target": f"<= {GATEWAY_P95:g} s",
                "ok": p95 is not None and p95 <= GATEWAY_P95,
            }
        )
        rows.append(
            {
                "mode": name,
                "figure": "wall time (all collected)",
                "value": f"{mode['wall_seconds']:.1f} s",
                "target": (
                    f"<= {mode['wall_target_seconds']:.1f} s = 1.1 x "
                    f"{mode['longest_task_seconds']:.1f} + {mode['submit_seconds']:.1f}"
                ),
                "ok": mode["wall_seconds"] <= mode["wall_target_seconds"]
                and mode["collected"] == mode["tasks"],
            }
        )
    coalescing = results.get("coalescing")
    if coalescing is not None:
        for variant in coalescing["variants"]:
            if variant["shape"] == "one waiter":
                continue
            rows.append(
                {
                    "mode": f"coalescing {variant['mode']}",
                    "figure": f"GETs, {variant['shape']} vs one",
                    "value": f"{variant['extra_gets']:+d} ({variant['gets']} GETs)",
                    "target": f"<= +{COALESCE_EXTRA_GETS}",
                    "ok": variant["extra_gets"] <= COALESCE_EXTRA_GETS
                    and variant["failed_waits"] == 0,
                }
            )
    memory = results.get("memory")
    if memory is not None:
        rows.append(
            {
                "mode": "memory",
                "figure": "per pending wait (with its asyncio task)",
                "value": f"{memory['wait_bytes']:.0f} B",
                "target": f"<= {WAIT_BYTES} B",
                "ok": memory["wait_bytes"] <= WAIT_BYTES,
            }
        )
        rows.append(
            {
                "mode": "memory",
                "figure": "handle without a wait",
                "value": f"{memory['handle_bytes']:.0f} B",
                "target": f"~{HANDLE_BYTES} B",
                "ok": memory["handle_bytes"] <= 1.5 * HANDLE_BYTES,
            }
        )
    return rows


def print_table(results: dict[str, Any], settings: dict[str, Any]) -> None:
    print(
        f"{settings['tasks']} tasks of {settings['min']:g}-{settings['max']:g} s (seed "
        f"{settings['seed']}; {SUBMITTED_SHARE[0]:.0%}-{SUBMITTED_SHARE[1]:.0%} of it submitted),"
        f" max_in_flight {MAX_IN_FLIGHT}, emulator in a child process"
    )
    timed = [results[name] for name in TIMED_MODES if name in results]
    if timed:
        header = (
            f"{'mode':<22}{'create/t':>9}{'query/t':>9}{'list/t':>8}{'p50 s':>8}{'p95 s':>8}"
            f"{'max s':>8}{'submit s':>9}{'wall s':>8}{'longest':>9}{'CPU ms/t':>10}{'done':>7}"
        )
        print()
        print(header)
        print("-" * len(header))
        for mode in timed:
            per, lat = mode["per_task"], mode["latency"]
            print(
                f"{mode['mode']:<22}{per['create']:>9.2f}{per['query']:>9.3f}{per['list']:>8.3f}"
                f"{fmt(lat['p50']):>8}{fmt(lat['p95']):>8}{fmt(lat['max']):>8}"
                f"{mode['submit_seconds']:>9.1f}{mode['wall_seconds']:>8.1f}"
                f"{mode['longest_task_seconds']:>9.1f}{mode['cpu_ms_per_task']:>10.2f}"
                f"{mode['collected']:>7}"
            )
    coalescing = results.get("coalescing")
    if coalescing is not None:
        print()
        print(f"coalescing: {COALESCE_TASKS} tasks, side by side")
        for v in coalescing["variants"]:
            print(
                f"  {v['mode']:<8} {v['shape']:<12} {v['waiters']:>5} waits  query {v['query']:>4}"
                f"  list {v['list']:>4}  GETs {v['gets']:>4} ({v['extra_gets']:+d})"
            )
    memory = results.get("memory")
    if memory is not None:
        print()
        print(
            f"memory (tracemalloc, {memory['waits']} each): pending wait "
            f"{memory['wait_bytes']:.0f} B (a bare asyncio.sleep task: "
            f"{memory['bare_sleep_task_bytes']:.0f} B); handle {memory['handle_bytes']:.0f} B, "
            f"handle of a new id with its state {memory['handle_with_state_bytes']:.0f} B; "
            f"as_completed {memory['as_completed_bytes_per_task']:.0f} B per task"
        )
        for key in ("wait_by_file", "wait_by_line"):
            print(
                f"  pending wait by {key.rpartition('_')[2]}: "
                + ", ".join(f"{f['where']} {f['bytes_per_wait']:.0f} B" for f in memory[key])
            )
    for mode in timed:
        print_details(mode)


def print_details(mode: dict[str, Any]) -> None:
    """Where one mode's requests and latency went."""
    lat = mode["latency"]
    print()
    print(f"{mode['mode']}: where the requests and the latency go")
    print(
        f"  queries per task before the finish {mode['queries_before_finish_per_task']:.2f}, "
        f"after it {mode['queries_after_finish_per_task']:.2f}; last finish "
        f"{mode['last_finish_after_start']:.1f} s after the first create"
    )
    print(
        f"  latency = finish to first look p50 {fmt(lat['server_side_p50'])} / p95 "
        f"{fmt(lat['server_side_p95'])} s + look to waiter p50 {fmt(lat['client_side_p50'])} / p95 "
        f"{fmt(lat['client_side_p95'])} s"
    )
    print(
        "  latency by task duration: "
        + "; ".join(
            f"{b['from']:.0f}-{b['to']:.0f} s: p50 {fmt(b['p50'])} p95 {fmt(b['p95'])}"
            for b in lat["by_duration"]
        )
    )
    print(
        "  latest: "
        + "; ".join(
            f"{t['duration']:.1f} s task {t['latency']:.2f} s late, {t['queries']} queries"
            for t in mode["latest"]
        )
    )
    print(
        "  requests per 10 s from the first create (create/query/list): "
        + " ".join(
            f"{int(k) * 10}:{c.get('create', 0)}/{c.get('query', 0)}/{c.get('list', 0)}"
            for k, c in mode["timeline_10s"].items()
        )
    )
    print(
        "  queries by task age per 10 s: "
        + " ".join(f"{int(k) * 10}s:{v}" for k, v in mode["queries_by_age_10s"].items())
    )
    if mode["query_ages"][0]["tasks"]:
        print(
            "  age of each task's k-th query, p10/p50/p90 s: "
            + "; ".join(
                f"#{q['k']} {fmt(q['p10'], '.1f')}/{fmt(q['p50'], '.1f')}/{fmt(q['p90'], '.1f')}"
                for q in mode["query_ages"]
                if q["tasks"]
            )
        )
    rounds = mode["list_rounds"]
    if rounds["rounds"]:
        print(
            f"  list refresh: {rounds['rounds']} rounds, {rounds['pages']} pages; gap between "
            f"rounds p10/p50/p90 {fmt(rounds['gap_p10'])}/{fmt(rounds['gap_p50'])}/"
            f"{fmt(rounds['gap_p90'])} s, {rounds['gaps_under_1s']} gaps under 1 s"
        )
    if "statistics" in mode:
        print(f"  session statistics: {mode['statistics']}")


# -- main ------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    durations = draw_durations(args.tasks, args.min, args.max, args.seed)
    child = Child()
    results: dict[str, Any] = {}
    try:
        for name in MODES:  # always in this order: naive first, memory last
            if name not in modes:
                continue
            log(f"running {name} ...")
            began = time.time()
            if name == "naive":
                results[name] = await run_naive(child, durations, args.tasks)
            elif name in TIMED_MODES:
                kind, _, waiting = name.partition("-")
                results[name] = await run_sdk(
                    child,
                    durations,
                    args.tasks,
                    list_mode=kind == "list",
                    waiting=waiting.replace("-", "_"),
                )
            elif name == "coalescing":
                results[name] = await run_coalescing(child, durations)
            else:
                results[name] = await run_memory(child)
            log(f"  {name} took {time.time() - began:.1f} s")
    finally:
        await child.aclose()
    return results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the docs' tables show (``bench/tables.py``), without the details."""
    figures: dict[str, Any] = {}
    for name in TIMED_MODES:
        mode = results.get(name)
        if mode is not None:
            figures[name] = {
                "tasks": mode["tasks"],
                "collected": mode["collected"],
                "non_create_per_task": mode["per_task"]["non_create"],
                "gets": mode["gets"],
                "p50": mode["latency"]["p50"],
                "p95": mode["latency"]["p95"],
                "submit_seconds": mode["submit_seconds"],
                "wall_seconds": mode["wall_seconds"],
                "wall_target_seconds": mode["wall_target_seconds"],
                "longest_task_seconds": mode["longest_task_seconds"],
                "cpu_ms_per_task": mode["cpu_ms_per_task"],
            }
    if "coalescing" in results:
        figures["coalescing"] = [
            {key: variant[key] for key in ("mode", "shape", "waiters", "gets", "extra_gets")}
            for variant in results["coalescing"]["variants"]
        ]
    if "memory" in results:
        memory = results["memory"]
        figures["memory"] = {
            key: memory[key]
            for key in (
                "waits",
                "wait_bytes",
                "bare_sleep_task_bytes",
                "handle_bytes",
                "handle_with_state_bytes",
                "as_completed_bytes_per_task",
            )
        }
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--min", type=float, default=30.0, help="shortest task, seconds")
    parser.add_argument("--max", type=float, default=90.0, help="longest task, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the results as JSON to PATH (without PATH: print JSON, not the table)",
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write bench/results/batch.json (default: only with the default settings)",
    )
    args = parser.parse_args()
    if not 0 <= args.min <= args.max or args.tasks < 1:
        parser.error("need --tasks >= 1 and 0 <= --min <= --max")
    defaults = {name: parser.get_default(name) for name in ("tasks", "min", "max", "seed", "modes")}
    record = args.record
    if record is None:
        record = all(getattr(args, name) == value for name, value in defaults.items())
    results = asyncio.run(main(args))
    settings = {"tasks": args.tasks, "min": args.min, "max": args.max, "seed": args.seed}
    rows = targets(results)
    document = {"settings": settings, "results": results, "targets": rows}
    if args.json == "-":
        print(json.dumps(document, indent=2))
    else:
        print_table(results, settings)
        if args.json is not None:
            Path(args.json).write_text(json.dumps(document, indent=2))
        print()
    report = Report("batch", settings=settings, record=record)
    for name, value in summary(results).items():
        report.figure(name, value)
    # With --json and no PATH the JSON is the output: the verdicts go to stderr.
    with contextlib.redirect_stdout(sys.stderr if args.json == "-" else sys.stdout):
        for row in rows:
            report.verdict(
                f"{row['mode']}: {row['figure']}",
                row["ok"],
                shown=row["value"],
                target=row["target"],
            )
        status = report.finish()
    sys.exit(status)
