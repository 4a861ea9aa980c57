"""The fleet end to end: worker processes on one Redis and one emulator in its own process.

Each worker is `tests/fleet_worker.py` with default policies (these tests prove crash and
busy-account behaviour); the emulator is `tests/emulator_process.py`, which outlives them.
"""

from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


class EmulatorProcess:
    """The emulator in a child process; `report` reads its tasks and requests."""

    def __init__(self, **config: Any) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.emulator_process", json.dumps(config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.info = json.loads(self.process.stdout.readline())

    def report(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.info["report"], timeout=30) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


class Worker:
    """One `tests/fleet_worker.py` process; `kill` is kill -9."""

    def __init__(self, emulator: EmulatorProcess, redis_url: str, **config: Any) -> None:
        self.config = {
            "base_url": emulator.info["base_url"],
            "access_key": emulator.info["access_key"],
            "secret_key": emulator.info["secret_key"],
            "redis": redis_url,
            **config,
        }
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet_worker", json.dumps(self.config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def kill(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()

    def finish(self, timeout: float) -> None:
        """Wait for the worker to end; it must end well."""
        assert self.process is not None
        out, _ = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, out
        assert out.rstrip().endswith("done"), out


@pytest.fixture
def emulator_factory() -> Iterator[type[EmulatorProcess]]:
    made: list[EmulatorProcess] = []

    class Made(EmulatorProcess):
        def __init__(self, **config: Any) -> None:
            super().__init__(**config)
            made.append(self)

    yield Made
    for emulator in made:
        emulator.close()


def creates_per_video(report: dict[str, Any]) -> collections.Counter[str]:
    return collections.Counter(task["video_id"] for task in report["tasks"])


def _both_creating(report: dict[str, Any]) -> bool:
    """At least 10 tasks made, some by the worker of v-0..19 and some by that of v-20..39."""
    if len(report["tasks"]) < 10:
        return False
    numbers = [int(video.removeprefix("v-")) for video in creates_per_video(report)]
    return min(numbers) < 20 <= max(numbers)


def refused_for_slots(report: dict[str, Any]) -> int:
    """Creates the emulator answered 1303 (its only 429 here: no faults are set)."""
    return sum(1 for r in report["requests"] if r["route"] == "create" and r["status"] == 429)


def results(path: Path) -> dict[str, str]:
    """Key -> task id of every finished key the workers recorded (the last line wins)."""
    done: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, task_id, _status = line.split()
            done[key] = task_id
    return done


@pytest.mark.crash
def test_four_workers_share_one_gate_and_make_each_key_once(
    redis_url: str, emulator_factory: type[EmulatorProcess], tmp_path: Path
) -> None:
    """4 workers x 25 keyed extends, the account's limit 5 set on the fleet: no 1303 caused
    by the fleet, every key's task made once, every key waited to the end."""
    emulator = emulator_factory(max_running=5, seconds=[0.3, 1.0])
    out = tmp_path / "results.txt"
    workers = [
        Worker(
            emulator, redis_url, first=25 * n, count=25, limit=5, results=str(out), policy="instant"
        ).start()
        for n in range(4)
    ]
    for worker in workers:
        worker.finish(timeout=240)
    report = emulator.report()
    assert 0 == refused_for_slots(report)
    assert {f"v-{i}": 1 for i in range(100)} == dict(creates_per_video(report))
    done = results(out)
    assert {f"k-{i}" for i in range(100)} == set(done)
    by_video = {task["video_id"]: task["task_id"] for task in report["tasks"]}
    assert {f"k-{i}": by_video[f"v-{i}"] for i in range(100)} == done


@pytest.mark.crash
def test_four_workers_of_250_keys_at_the_limit_of_20(
    redis_url: str, emulator_factory: type[EmulatorProcess], tmp_path: Path
) -> None:
    """The issue's size: 4 workers x 250 keyed extends, the emulator's limit 20 and the
    fleet's 20: no 1303 from the fleet itself, every key made once and waited to the end."""
    emulator = emulator_factory(max_running=20, seconds=[0.2, 0.6])
    out = tmp_path / "results.txt"
    workers = [
        Worker(
            emulator,
            redis_url,
            first=250 * n,
            count=250,
            limit=20,
            results=str(out),
            policy="instant",
        ).start()
        for n in range(4)
    ]
    for worker in workers:
        worker.finish(timeout=600)
    report = emulator.report()
    assert 0 == refused_for_slots(report)
    assert {f"v-{i}": 1 for i in range(1000)} == dict(creates_per_video(report))
    assert {f"k-{i}" for i in range(1000)} == set(results(out))


@pytest.mark.crash
def test_workers_killed_at_random_points_pay_for_no_key_twice(
    redis_url: str, emulator_factory: type[EmulatorProcess], tmp_path: Path
) -> None:
    """3 of 4 workers kill -9ed at random points, then started again on the same keys:
    every key's task made once, and every key waited to the end."""
    rng = random.Random(16)
    emulator = emulator_factory(max_running=8, seconds=[0.5, 2.0])
    out = tmp_path / "results.txt"
    workers = [
        Worker(emulator, redis_url, first=20 * n, count=20, limit=8, results=str(out)).start()
        for n in range(4)
    ]
    for worker in workers[:3]:
        deadline = time.monotonic() + 60
        while len(emulator.report()["tasks"]) < rng.randint(3, 30):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3))
        worker.kill()
    for worker in workers[:3]:
        worker.start()
    for worker in workers:
        worker.finish(timeout=240)
    report = emulator.report()
    assert {f"v-{i}": 1 for i in range(80)} == dict(creates_per_video(report))
    by_video = {task["video_id"]: task["task_id"] for task in report["tasks"]}
    assert {f"k-{i}": by_video[f"v-{i}"] for i in range(80)} == results(out)


@pytest.mark.crash
def test_a_redis_restart_in_the_middle_of_a_batch_loses_and_doubles_nothing(
    emulator_factory: type[EmulatorProcess], tmp_path: Path
) -> None:
    """Redis stopped and started again (its AOF kept) while 2 workers run 20 keys each:
    every key's task made once, every wait ends."""
    server = RedisServer().start()
    try:
        emulator = emulator_factory(max_running=10, seconds=[1.0, 3.0])
        out = tmp_path / "results.txt"
        workers = [
            Worker(emulator, server.url, first=20 * n, count=20, limit=10, results=str(out)).start()
            for n in range(2)
        ]
        deadline = time.monotonic() + 60
        # Both workers past their session's opening (which Redis must answer) and creating.
        while not _both_creating(emulator.report()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.stop()
        time.sleep(2.0)
        server.start()
        for worker in workers:
            worker.finish(timeout=240)
        report = emulator.report()
        assert {f"v-{i}": 1 for i in range(40)} == dict(creates_per_video(report))
        assert {f"k-{i}" for i in range(40)} == set(results(out))
    finally:
        server.close()
