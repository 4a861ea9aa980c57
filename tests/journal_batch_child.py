"""A batch script for the crash tests: keyed extends through a journal, then wait for all.

Run as ``python tests/journal_batch_child.py BASE_URL JOURNAL COUNT [MODE]``; it prints one
line per created task and per finished task (the parent kills it at random points), and
``done`` at the end. Re-running it must resume: nothing submitted twice, every task waited
for. MODE ``instant`` (the default) removes every wait; ``official`` and ``gateway`` keep the
default retry policy (look-ups of creates in doubt every few seconds until their window
closes) with short timeouts, with access keys (stamped external ids) or a gateway key.
"""

from __future__ import annotations

import sys

import anyio

from kling_async import KlingSession, PollPolicy, RetryPolicy


def _session(base_url: str, journal: str, mode: str) -> KlingSession:
    common = {
        "journal": journal,
        "poll_policy": PollPolicy.instant(),  # waits are not what these tests attack
        "connect_timeout": 0.5,
        "read_timeout": 0.5,
    }
    if mode == "gateway":
        return KlingSession("test-key", base_url=base_url + "/kling", **common)  # type: ignore[arg-type]
    return KlingSession(
        access_key="test-access-key",
        secret_key="test-secret-key",
        base_url=base_url,
        retry_policy=RetryPolicy.instant() if mode == "instant" else RetryPolicy(),
        **common,  # type: ignore[arg-type]
    )


async def main(base_url: str, journal: str, count: int, mode: str) -> None:
    async with _session(base_url, journal, mode) as session:
        limit = anyio.Semaphore(16)
        handles = []

        async def submit(n: int) -> None:
            async with limit:
                handle = await session.extend(f"vid-{n}", key=f"row-{n}")
                handles.append(handle)
                print("created", n, handle.task_id, flush=True)

        # Creates in doubt from a killed run are settled first, side by side.
        resumed = await session.resume()
        async with anyio.create_task_group() as group:
            for n in range(count):
                group.start_soon(submit, n)
        async with anyio.create_task_group() as group:
            for handle in [*resumed, *await session.resume()]:
                group.start_soon(handle.wait)
        print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), (sys.argv[4:] or ["instant"])[0])
