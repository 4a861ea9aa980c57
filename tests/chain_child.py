"""A chain script for the crash tests: one keyed chain of extends through a journal.

Run as ``python tests/chain_child.py BASE_URL JOURNAL LINKS``; it prints one line per
finished link and ``done`` with the last task id at the end (the parent kills it at random
links). Re-running it must resume: no link paid twice. The retry policy is the default one
(creates in doubt looked up every few seconds until their window closes), with short
timeouts; polls are instant, waits are not what these tests attack.
"""

from __future__ import annotations

import sys

import anyio

from kling_async import KlingSession, PollPolicy


async def main(base_url: str, journal: str, links: int) -> None:
    async with KlingSession(
        access_key="test-access-key",
        secret_key="test-secret-key",
        base_url=base_url,
        journal=journal,
        poll_policy=PollPolicy.instant(),
        connect_timeout=0.5,
        read_timeout=0.5,
    ) as session:
        chain = session.chain("v0", [f"shot {n}" for n in range(1, links + 1)], key="film")
        async for task in chain.watch():
            print("link", task.task_id, flush=True)
        print("done", (await chain).task_id, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
