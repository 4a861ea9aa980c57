"""Kling extends as Taskiq jobs, on the fleet's Redis (docs/fleet.md, "A job queue on top").

A job extends a video once per key, waits for the task and saves the video as
``<out_dir>/<key>.mp4``. A worker killed mid-job (``kill -9``) has its jobs delivered
again to another worker, which finds the key's task in the fleet's journal: nothing is
paid twice, no result is lost.

    taskiq worker taskiq_fleet:broker --workers 4          # the workers
    python taskiq_fleet.py videos row-1=VIDEO_ID ...       # kick jobs, print each result

Environment: REDIS_URL (default redis://localhost:6379/0); the Kling credentials
(KLING_ACCESS_KEY and KLING_SECRET_KEY, or KLING_API_KEY and KLING_BASE_URL); and
REDELIVER_AFTER_SECONDS (default 1800), how long a job's worker may be silent before the
job goes to another worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis
from taskiq import AckableMessage, TaskiqEvents, TaskiqState
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from kling_async import KlingSession, TaskFailedError

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
# Longer than the longest job: an extend may wait minutes for a slot, then minutes to run.
# A job still running when it passes is run a second time beside the first, which is only
# waste: the second finds the key's task in the journal and waits for it too.
REDELIVER_AFTER_SECONDS = float(os.environ.get("REDELIVER_AFTER_SECONDS", "1800"))


class ReclaimingStreamBroker(RedisStreamBroker):
    """A `RedisStreamBroker` whose workers take over a dead worker's jobs on a quiet queue too.

    taskiq-redis 1.2.4 reclaims (XAUTOCLAIM) only after a read (XREADGROUP) that brought new
    jobs, so a killed worker's jobs waited for the next kick. Here every round first claims
    jobs delivered more than ``idle_timeout`` ms ago and never acknowledged, then waits for
    new ones at most ``xread_block`` ms. XAUTOCLAIM is one atomic command: a job it gives to
    one worker is no longer idle for the next, so no lock is taken.
    """

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        cursor: bytes | str = "0-0"
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                reply = await redis.xautoclaim(
                    self.queue_name,
                    self.consumer_group_name,
                    self.consumer_name,
                    min_idle_time=self.idle_timeout,
                    start_id=cursor,
                    count=self.count,
                )
                cursor, jobs = reply[0], reply[1]
                if not jobs:  # nothing to take over: wait for new jobs
                    streams = await redis.xreadgroup(
                        self.consumer_group_name,
                        self.consumer_name,
                        {self.queue_name: ">"},
                        count=self.count,
                        block=self.block,
                    )
                    assert isinstance(streams, list), "RESP2 replies, as a redis:// URL gives"
                    jobs = [job for _name, new in streams for job in new]
                for job_id, fields in jobs:
                    yield AckableMessage(data=fields[b"data"], ack=self._acker(job_id))

    def _acker(self, job_id: bytes) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            async with Redis(connection_pool=self.connection_pool) as redis:
                await redis.xack(self.queue_name, self.consumer_group_name, job_id)

        return ack


broker = ReclaimingStreamBroker(
    REDIS_URL,
    queue_name="kling-extends",
    # Who holds which job, in XINFO CONSUMERS: this host and process.
    consumer_name=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
    # The consumer group starts at the stream's beginning: jobs kicked before the first
    # worker ever started are not skipped (the default, "$", skips them).
    consumer_id="0",
    # One job per read: a worker takes a job only when it has room to run it, so a killed
    # worker strands only the jobs it was running (the default, 100, takes a hundred at once).
    xread_count=1,
    idle_timeout=int(REDELIVER_AFTER_SECONDS * 1000),
    # Not used by the listen() above (it takes no lock); the stock one takes a lock that a
    # killed worker may leave behind forever without it (taskiq-python/taskiq-redis#131).
    unacknowledged_lock_timeout=30,
    # A bound on the stream: keep the backlog of jobs not yet done well below it, since
    # trimming drops the oldest entries whether they are done or not.
    maxlen=100_000,
).with_result_backend(RedisAsyncResultBackend(REDIS_URL, result_ex_time=7 * 24 * 3600))


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def open_session(state: TaskiqState) -> None:
    """One session per worker process, shared by its jobs: one link to the fleet."""
    state.kling = await KlingSession(fleet=REDIS_URL).__aenter__()


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def close_session(state: TaskiqState) -> None:
    await state.kling.aclose()


@broker.task(task_name="extend_video")
async def extend_video(key: str, video_id: str, prompt: str | None, out_dir: str) -> dict[str, str]:
    """Extend ``video_id`` once for ``key``, wait, and save the video as out_dir/<key>.mp4.

    The same key (a job delivered again, a job kicked twice) gets the same task: created
    at most once by the whole fleet, then waited for and saved by whoever runs the job.
    """
    session: KlingSession = broker.state.kling  # open_session's
    path = Path(out_dir) / f"{key}.mp4"
    if path.name != f"{key}.mp4" or key.startswith("."):
        raise ValueError(f"the key names the file: {key!r} is not a plain file name")
    handle = await session.extend(video_id, prompt=prompt, key=key)
    try:
        task = await handle
    except TaskFailedError as error:
        return {"key": key, "task_id": handle.task_id, "status": "failed", "reason": error.reason}
    if not path.exists():  # a file under its final name is whole (docs/downloads.md)
        path.parent.mkdir(parents=True, exist_ok=True)
        await session.download(task, path)  # atomic: a temporary file, then a rename
    return {"key": key, "task_id": task.task_id, "status": "succeed", "path": str(path)}


async def kick(out_dir: str, videos: dict[str, str], prompt: str | None = None) -> None:
    """Kick one job per key (``videos``: key to video id); print each result as JSON."""
    await broker.startup()
    try:
        jobs = [
            await extend_video.kiq(key, video_id, prompt, out_dir)
            for key, video_id in videos.items()
        ]
        for job in jobs:
            result = await job.wait_result()
            result.raise_for_error()
            print(json.dumps(result.return_value), flush=True)
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    folder, *pairs = sys.argv[1:]
    asyncio.run(kick(folder, {key: video for key, _, video in (p.partition("=") for p in pairs)}))
