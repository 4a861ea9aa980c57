"""A child process for the Redis journal's multi-process tests (tests/test_fleet_journal.py).

python tests/fleet_journal_child.py race URL TAG KEYS     claim KEYS keys after "go" on stdin,
                                                          print {key: [outcome, task_id]}
python tests/fleet_journal_child.py crash URL             claim key-0 and mark it sending,
                                                          print "sending", then sleep until
                                                          killed
python tests/fleet_journal_child.py extend URL BASE KEYS  keyed extends of KEYS keys through a
                                                          KlingSession on the emulator at BASE
                                                          after "go", print {key: task_id}
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from kling_async import KlingSession, PollPolicy, RetryPolicy
from kling_async._fleet import Fleet
from kling_async._journal import ClaimOutcome
from kling_async._redis_journal import RedisJournal
from kling_async.models import ExtendRequest

ACCOUNT = "fleet-journal-test"


def request_for(index: int) -> ExtendRequest:
    """The request every process agrees on for key number ``index``."""
    return ExtendRequest(video_id=f"video-{index}", prompt="fleet journal test")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@asynccontextmanager
async def fleet_journal(url: str) -> AsyncIterator[RedisJournal]:
    """A fleet (its lease renewed in the background) and its open journal."""
    fleet = Fleet(url, account=ACCOUNT)
    await fleet.open()
    try:
        async with RedisJournal(fleet) as journal:
            yield journal
    finally:
        await fleet.aclose()


async def race(url: str, tag: str, keys: int) -> None:
    async with fleet_journal(url) as journal:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "go": all start together
        seen: dict[str, list[str | None]] = {}

        async def one(index: int) -> None:
            key = f"key-{index}"
            claim = await journal.claim(
                key, request_for(index), now=now(), stamp=f"{tag}-{index}", wait=30
            )
            if claim.outcome is ClaimOutcome.FRESH:
                await journal.mark_sending(key, now())
                await journal.mark_created(key, f"task-{tag}-{index}")
            seen[key] = [claim.outcome.value, claim.task_id]

        async with anyio.create_task_group() as group:
            for index in range(keys):
                group.start_soon(one, index)
    print(json.dumps(seen), flush=True)


async def crash(url: str) -> None:
    async with fleet_journal(url) as journal:
        claim = await journal.claim("key-0", request_for(0), now=now(), stamp="crash-0")
        assert claim.outcome is ClaimOutcome.FRESH, claim
        await journal.mark_sending("key-0", now())
        print(f"sending {journal.token}", flush=True)
        await anyio.sleep(600)


async def extend(url: str, base_url: str, keys: int) -> None:
    fleet = Fleet(url, account=ACCOUNT)
    await fleet.open()
    try:
        journal = RedisJournal(fleet)
        async with (
            journal,
            KlingSession(
                access_key="test-access-key",
                secret_key="test-secret-key",
                base_url=base_url,
                journal=journal,
                poll_policy=PollPolicy.instant(),
                retry_policy=RetryPolicy.instant(),
            ) as session,
        ):
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)
            made: dict[str, str] = {}

            async def one(index: int) -> None:
                handle = await session.extend(f"vid-{index}", key=f"row-{index}")
                made[f"row-{index}"] = handle.task_id

            async with anyio.create_task_group() as group:
                for index in range(keys):
                    group.start_soon(one, index)
    finally:
        await fleet.aclose()
    print(json.dumps(made), flush=True)


def main() -> None:
    mode, url, *rest = sys.argv[1:]
    if mode == "race":
        tag, keys = rest
        anyio.run(race, url, tag, int(keys))
    elif mode == "crash":
        anyio.run(crash, url)
    elif mode == "extend":
        base_url, keys = rest
        anyio.run(extend, url, base_url, int(keys))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
