"""docs/recipes/taskiq_fleet.py as written: real `taskiq worker` processes on a real Redis,
the emulator in its own process, one worker killed with SIGKILL in the middle of its jobs.

The workers import one more module, ``taskiq_fast_polls``, which only shortens the default
poll policy (the emulator's tasks end in a second); everything else is the recipe's.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from taskiq.message import BrokerMessage

from kling_async import KlingSession, Task
from kling_async.testing import KlingEmulator

from .test_cli import child_env
from .test_docs_examples import ROOT, blocks

RECIPE = ROOT / "docs" / "recipes" / "taskiq_fleet.py"
PAGE = "docs/fleet.md"
QUEUE, GROUP = "kling-extends", "taskiq"  # the recipe's stream and taskiq's consumer group
JOBS = 20
REDELIVER_AFTER = 4.0  # seconds; the emulator's tasks end 2 s after their create

pytestmark = pytest.mark.anyio


def test_the_page_shows_the_recipe_as_it_is() -> None:
    """docs/fleet.md shows the file whole, as it is."""
    shown = [block.code for block in blocks(PAGE) if "class ReclaimingStreamBroker" in block.code]
    assert [RECIPE.read_text()] == shown


# -- the broker's listen(), in this process ---------------------------------------------------


def recipe_module() -> ModuleType:
    """The recipe imported from its file (taskiq finds a task's module in sys.modules)."""
    spec = importlib.util.spec_from_file_location("taskiq_fleet", RECIPE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("taskiq_fleet", module)
    spec.loader.exec_module(module)
    return module


async def test_a_dead_worker_s_job_is_taken_over_on_a_quiet_queue(redis_url: str) -> None:
    """A job kicked before any worker started is read; once its reader is silent for
    idle_timeout, another worker takes it over although nothing new was kicked."""
    recipe = recipe_module()
    brokers = [
        recipe.ReclaimingStreamBroker(
            redis_url,
            queue_name="jobs",
            consumer_name=name,
            consumer_id="0",
            xread_count=1,
            xread_block=100,
            idle_timeout=300,
        )
        for name in ("dead", "alive")
    ]
    dead, alive = brokers
    await dead.kick(BrokerMessage(task_id="1", task_name="t", message=b"job-1", labels={}))
    for broker in brokers:
        await broker.startup()
    try:
        reading = dead.listen()
        first = await anext(reading)
        await reading.aclose()  # it never acknowledges: as if killed
        taking_over = alive.listen()
        with anyio.fail_after(10):
            again = await anext(taking_over)
        await again.ack()
        await taking_over.aclose()
        async with aioredis.Redis.from_url(redis_url) as client:
            pending = await client.xpending("jobs", GROUP)
    finally:
        for broker in brokers:
            await broker.shutdown()
    assert b"job-1" == first.data == again.data
    assert 0 == pending["pending"]


# -- the recipe with real workers -------------------------------------------------------------


@contextlib.contextmanager
def emulator(*options: str) -> Iterator[str]:
    """`kling-async emulator` in its own process; yields its official base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kling_async", "emulator", "--port", "0", *options],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert process.stdout is not None
    try:
        url = ""
        for line in process.stdout:
            if "official base URL:" in line:
                url = line.split("official base URL:")[1].strip()
                break
        assert url, "the emulator did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@contextlib.contextmanager
def workers(env: dict[str, str], log: Path, count: int) -> Iterator[subprocess.Popen[bytes]]:
    """`taskiq worker taskiq_fleet:broker --workers N`, stopped with Ctrl+C (SIGINT) at the
    end; its process group is killed if it has not stopped 10 s later."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "taskiq", "worker", "taskiq_fleet:broker"),
                *("tests.taskiq_fast_polls", "--workers", str(count)),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def pid_of(consumer: dict[str, Any]) -> int:
    """The worker process behind a consumer named ``<host>-<pid>-<random>`` by the recipe."""
    return int(consumer["name"].decode().rsplit("-", 2)[1])


async def consumers(client: aioredis.Redis) -> list[dict[str, Any]]:
    try:
        return list(await client.xinfo_consumers(QUEUE, GROUP))
    except aioredis.ResponseError:  # no stream or no group yet
        return []


@contextlib.asynccontextmanager
async def listing(url: str) -> AsyncIterator[KlingSession]:
    async with KlingSession(
        access_key="test-access-key", secret_key="test-secret-key", base_url=url
    ) as session:
        yield session


async def tasks_on(session: KlingSession) -> list[Task]:
    return [task async for task in session.list_tasks(page_size=500)]


@pytest.mark.crash
async def test_a_worker_killed_mid_job_pays_nothing_twice_and_loses_no_result(
    redis_url: str, tmp_path: Path
) -> None:
    """20 jobs, 2 workers, one SIGKILLed while it runs jobs after creates reached Kling;
    taskiq restarts it. Every job's result arrives and its video is saved whole; every
    key's create reached the emulator once."""
    out, log, printed = tmp_path / "videos", tmp_path / "workers.log", tmp_path / "kicked.txt"
    with emulator("--step-seconds", "1") as url:
        env = child_env(
            REDIS_URL=redis_url,
            KLING_ACCESS_KEY="test-access-key",
            KLING_SECRET_KEY="test-secret-key",
            KLING_BASE_URL=url,
            REDELIVER_AFTER_SECONDS=str(REDELIVER_AFTER),
        )
        env.pop("KLING_API_KEY", None)
        env["PYTHONPATH"] = os.pathsep.join([str(RECIPE.parent), env["PYTHONPATH"]])
        async with aioredis.Redis.from_url(redis_url) as client, listing(url) as session:
            with workers(env, log, 2), printed.open("wb") as output:
                with anyio.fail_after(30):  # both listen before the kick: jobs go to both
                    while (await anyio.Path(log).read_text()).count("Listening started.") < 2:
                        await anyio.sleep(0.05)
                kicks = [f"key-{n}=video-{n}" for n in range(JOBS)]
                async with await anyio.open_process(
                    [sys.executable, str(RECIPE), str(out), *kicks],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=tmp_path,
                ) as kicker:
                    try:
                        with anyio.fail_after(30):
                            victim = await busy_worker(client, session)
                        os.kill(pid_of(victim), signal.SIGKILL)
                        with anyio.fail_after(40):
                            await kicker.wait()
                    finally:
                        if kicker.returncode is None:
                            kicker.kill()
            after = {c["name"]: c for c in await consumers(client)}
            pending = await client.xpending(QUEUE, GROUP)
            made = await tasks_on(session)

    assert 0 == kicker.returncode, (await anyio.Path(printed).read_text())[-3000:]
    check_every_job_done_once(printed, out, made)
    # The killed worker held jobs; others took them over and every job was acknowledged.
    assert victim["pending"] >= 2
    assert 0 == after[victim["name"]]["pending"] == pending["pending"]
    assert "restarted with pid" in await anyio.Path(log).read_text()  # taskiq's replacement


def check_every_job_done_once(printed: Path, out: Path, made: list[Task]) -> None:
    """Each key's result was printed, its create reached the emulator once, its video was
    saved whole as <key>.mp4, and nothing partial is left in ``out``."""
    results = {row["key"]: row for row in map(json.loads, printed.read_text().splitlines())}
    keys = {f"key-{n}" for n in range(JOBS)}
    assert keys == set(results)
    assert {"succeed"} == {row["status"] for row in results.values()}
    parents = collections.Counter(task.parent_video.id for task in made if task.parent_video)
    assert {f"video-{n}": 1 for n in range(JOBS)} == dict(parents)
    assert JOBS == len(made)
    by_id = {task.task_id: task for task in made}
    media = KlingEmulator()
    for key, row in results.items():
        video = by_id[row["task_id"]].video
        assert video is not None
        assert out / f"{key}.mp4" == Path(row["path"])
        assert media.media_content(video.id) == Path(row["path"]).read_bytes()
    assert sorted(f"{key}.mp4" for key in keys) == sorted(path.name for path in out.iterdir())


async def busy_worker(client: aioredis.Redis, session: KlingSession) -> dict[str, Any]:
    """The consumer of the worker holding the most jobs, once it holds two or more and
    creates have reached the emulator."""
    while True:
        found = sorted(await consumers(client), key=lambda c: -int(c["pending"]))
        if found and found[0]["pending"] >= 2 and await tasks_on(session):
            return found[0]
        await anyio.sleep(0.02)
