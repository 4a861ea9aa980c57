"""The fleet against one process: wall time, requests, detection, 1303s, Redis (issue 16).

``--tasks`` extends (default 1,000) of ``--min``..``--max`` seconds (default 30-90, seeded)
against an emulator in a child process (``bench/batch_emulator.py``) with a parallel-task
limit of ``--limit`` (default 50) and the task list offered; default policies. Modes, each
on a fresh emulator, one after the other:

- ``single``: one process, today's session without Redis, ``max_parallel_tasks`` set;
- ``fleet``: ``--processes`` processes (default 4) share the tasks, keyed, on one Redis
  (a ``redis-server`` of its own on a free port) with ``max_parallel_tasks`` set;
- ``fleet-wait-all``: the same, and each process also waits on every task of the run;
- ``fleet-learn``: ``--learn-tasks`` keyed extends (default 200) with no limit set: the
  1303s it takes to learn the limit.

Detection latency is when the creating process saw its task done minus the emulator's
``finishes_at``. Redis commands per task come from ``INFO commandstats`` (the commands a Lua
script runs count one each), Redis memory per task is the peak of ``used_memory`` over the
run, less the empty Redis's, over the run's tasks (journal records, task states, the events
stream and the slots together).

    python bench/bench_fleet.py [--tasks 1000] [--min 30] [--max 90] [--limit 50]
                                [--processes 4] [--modes single,fleet,...] [--record]

A quick run: ``--tasks 200 --min 5 --max 15 --limit 20``. The default run takes about an
hour (each mode is limited by the account's parallel tasks: 1,000 x 60 s / 50 slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from _targets import Report
from bench_batch import Child, draw_durations, log, percentile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kling_async._redis_gate import PROBE
from tests.redis_server import RedisServer

MODES = ("single", "fleet", "fleet-wait-all", "fleet-learn")
WALL_FACTOR = 1.1
REQUESTS_FACTOR = 1.1
P95_SLACK = 0.5
WAIT_ALL_FACTOR = 1.1


def run_clients(
    emulator: dict[str, Any], processes: int, n: int, **config: Any
) -> list[dict[str, Any]]:
    """Start ``processes`` clients splitting ``n`` tasks; their reports once all ended."""
    script = Path(__file__).with_name("fleet_client.py")
    share = math.ceil(n / processes)
    children = []
    for p in range(processes):
        first = p * share
        body = {
            "base_url": emulator["base_url"],
            "access_key": emulator["access_key"],
            "secret_key": emulator["secret_key"],
            "first": first,
            "count": max(0, min(share, n - first)),
            "processes": processes,
            **config,
        }
        children.append(
            subprocess.Popen(
                [sys.executable, str(script), json.dumps(body)], stdout=subprocess.PIPE, text=True
            )
        )
    reports = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a fleet client failed ({child.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def figures(report: Any, clients: list[dict[str, Any]], n: int) -> dict[str, Any]:
    tasks = {task["task_id"]: task for task in report["tasks"]}
    routes = Counter(report["requests"]["route"])
    refused = sum(
        1
        for route, status in zip(
            report["requests"]["route"], report["requests"]["status"], strict=True
        )
        if route == "create" and status == 429
    )
    latencies = []
    for client in clients:
        for task_id in client["mine"]:
            if task_id in client["seen"] and task_id in tasks:
                latencies.append(client["seen"][task_id] - tasks[task_id]["finishes_at"])
    started = min(client["started"] for client in clients)
    ended = max(client["ended"] for client in clients)
    return {
        "wall": ended - started,
        "requests_per_task": len(report["requests"]["route"]) / n,
        "non_create": routes["query"] + routes["list"],
        "queries": routes["query"],
        "lists": routes["list"],
        "p95": percentile(latencies, 0.95),
        "refused_1303": refused,
        "tasks": len(tasks),
        "videos_once": len({task["video_id"] for task in tasks.values()}) == len(tasks),
    }


async def mode(
    child: Child, name: str, args: argparse.Namespace, server: RedisServer | None
) -> dict[str, Any]:
    n = args.learn_tasks if name == "fleet-learn" else args.tasks
    durations = draw_durations(n, args.min, args.max, args.seed)
    emulator = await child.emulator("ok", durations, max_running=args.limit)
    client = redis.Redis.from_url(server.url) if server is not None else None
    if client is not None:
        client.flushall()
        client.config_resetstat()
        memory_before = client.info("memory")["used_memory"]
    log(f"{name}: {n} tasks")
    with tempfile.TemporaryDirectory() as ids:
        config: dict[str, Any] = {"limit": None if name == "fleet-learn" else args.limit}
        if server is not None:
            config["redis"] = server.url
        if name == "fleet-wait-all":
            config.update(wait_all=True, ids=ids)
        processes = 1 if name == "single" else args.processes
        loop = asyncio.get_running_loop()
        sampler = None
        peak = [0]
        if client is not None:

            async def sample() -> None:
                while True:
                    used = await loop.run_in_executor(None, lambda: client.info("memory"))
                    peak[0] = max(peak[0], used["used_memory"] - memory_before)
                    await asyncio.sleep(1.0)

            sampler = asyncio.ensure_future(sample())
        clients = await loop.run_in_executor(
            None, lambda: run_clients(emulator, processes, n, **config)
        )
        if sampler is not None:
            sampler.cancel()
    report = await child.report(emulator)
    await child.close_emulator(emulator)
    result = figures(report, clients, n)
    if client is not None:
        stats = client.info("commandstats")
        calls = sum(value["calls"] for value in stats.values())
        top = sorted(stats.items(), key=lambda item: -item[1]["calls"])[:8]
        log(
            f"{name}: Redis commands per task: "
            + ", ".join(
                f"{command.removeprefix('cmdstat_')} {value['calls'] / n:.1f}"
                for command, value in top
            )
        )
        result["redis_ops_per_task"] = calls / n
        # Everything the run keeps in Redis at its peak, over its tasks: the journal's records
        # (kept), the task states (a day), the events stream (capped) and the slots.
        result["redis_bytes_per_task"] = peak[0] / n
        client.close()
    log(f"{name}: {json.dumps(result)}")
    return result


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--learn-tasks", type=int, default=200)
    parser.add_argument("--min", type=float, default=30.0)
    parser.add_argument("--max", type=float, default=90.0)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    modes = args.modes.split(",")
    defaults = (args.tasks, args.min, args.max, args.limit, args.processes) == (
        1000,
        30.0,
        90.0,
        50,
        4,
    )
    report = Report(
        "fleet",
        settings={
            "tasks": args.tasks,
            "min": args.min,
            "max": args.max,
            "limit": args.limit,
            "processes": args.processes,
        },
        record=args.record or (defaults and modes == list(MODES)),
    )
    child = Child()
    results: dict[str, dict[str, Any]] = {}
    with RedisServer() as server:
        try:
            for name in modes:
                results[name] = await mode(child, name, args, None if name == "single" else server)
        finally:
            await child.aclose()
    single = results.get("single")
    fleet = results.get("fleet")
    if single and fleet:
        report.check(
            "fleet wall time / single", fleet["wall"] / single["wall"], WALL_FACTOR, unit="x"
        )
        report.check(
            "fleet requests per task / single",
            fleet["requests_per_task"] / single["requests_per_task"],
            REQUESTS_FACTOR,
            unit="x",
        )
        report.check(
            "fleet p95 detection - single", fleet["p95"] - single["p95"], P95_SLACK, unit=" s"
        )
        report.check("1303 caused by the fleet (limit set)", fleet["refused_1303"], 0, digits=0)
        report.figure("single wall time (s)", round(single["wall"], 1))
        report.figure("fleet wall time (s)", round(fleet["wall"], 1))
        report.figure("single p95 detection (s)", round(single["p95"], 2))
        report.figure("fleet p95 detection (s)", round(fleet["p95"], 2))
        report.figure(
            "fleet Redis commands per task (inside Lua included)",
            round(fleet["redis_ops_per_task"], 1),
        )
        report.figure(
            "fleet Redis memory per task at peak (bytes)", round(fleet["redis_bytes_per_task"])
        )
    wait_all = results.get("fleet-wait-all")
    if single and wait_all:
        report.check(
            "non-create requests, 4 waiting on all / single",
            wait_all["non_create"] / single["non_create"],
            WAIT_ALL_FACTOR,
            unit="x",
        )
    learn = results.get("fleet-learn")
    if learn:
        report.check("1303s while learning the limit", learn["refused_1303"], PROBE, digits=0)
    for name, result in results.items():
        report.check(
            f"{name}: every video made once",
            float(result["videos_once"]),
            1,
            better="higher",
            digits=0,
        )
    return report.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
