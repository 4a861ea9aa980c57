"""A batch script for the crash test: keyed extends through a journal, then wait for all.

Run as ``python tests/journal_batch_child.py BASE_URL JOURNAL COUNT``; it prints one line per
created task and per finished task (the parent kills it at random points), and ``done`` at
the end. Re-running it must resume: nothing submitted twice, every task waited for.
"""

from __future__ import annotations

import sys

import anyio

from kling_async import KlingSession, PollPolicy, RetryPolicy


async def main(base_url: str, journal: str, count: int) -> None:
    session = KlingSession(
        access_key="test-access-key",
        secret_key="test-secret-key",
        base_url=base_url,
        journal=journal,
        poll_policy=PollPolicy.instant(),
        retry_policy=RetryPolicy.instant(),
        connect_timeout=0.5,
        read_timeout=0.5,
    )
    async with session:
        limit = anyio.Semaphore(16)
        handles = []

        async def submit(n: int) -> None:
            async with limit:
                handle = await session.extend(f"vid-{n}", key=f"row-{n}")
                handles.append(handle)
                print("created", n, handle.task_id, flush=True)

        async with anyio.create_task_group() as group:
            for n in range(count):
                group.start_soon(submit, n)
        async with anyio.create_task_group() as group:
            for handle in await session.resume():
                group.start_soon(handle.wait)
        print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
