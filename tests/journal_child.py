"""A child process for the journal's multi-process tests (run by tests/test_journal.py).

python tests/journal_child.py race DB TAG KEYS   claim KEYS keys after "go" on stdin,
                                                  print {key: [outcome, task_id]} as JSON
python tests/journal_child.py crash DB           claim keys until killed, printing one
                                                  line per committed step
"""

from __future__ import annotations

import datetime as dt
import json
import sys

import anyio

from kling_async._journal import ClaimOutcome
from kling_async._sqlite_journal import SQLiteJournal
from kling_async.models import ExtendRequest


def request_for(index: int) -> ExtendRequest:
    """The request both sides agree on for key number ``index``."""
    return ExtendRequest(video_id=f"video-{index}", prompt="journal test")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def race(path: str, tag: str, keys: int) -> None:
    async with SQLiteJournal(path) as journal:
        print("ready", flush=True)
        sys.stdin.readline()  # "go": both processes start claiming together
        seen: dict[str, list[str | None]] = {}
        for index in range(keys):
            key = f"key-{index}"
            claim = await journal.claim(
                key, request_for(index), now=now(), stamp=f"{tag}-{index}", wait=30
            )
            if claim.outcome is ClaimOutcome.FRESH:
                await journal.mark_sending(key, now())
                await journal.mark_created(key, f"task-{tag}-{index}")
            seen[key] = [claim.outcome.value, claim.task_id]
    print(json.dumps(seen), flush=True)


async def crash(path: str) -> None:
    """Key ``i`` is left at INTENT (i % 3 == 0), SENDING (1) or CREATED (2), owned until the
    kill; a line is printed once each step has committed."""
    async with SQLiteJournal(path) as journal:
        print(f"token {journal.token}", flush=True)
        for index in range(100_000):
            key = f"key-{index}"
            claim = await journal.claim(key, request_for(index), now=now(), stamp=f"x-{index}")
            assert claim.outcome is ClaimOutcome.FRESH, claim
            print(f"intent {key}", flush=True)
            if index % 3 == 0:
                continue
            await journal.mark_sending(key, now())
            print(f"sending {key}", flush=True)
            if index % 3 == 1:
                continue
            await journal.mark_created(key, f"task-{index}", {"task_id": f"task-{index}"})
            print(f"created {key}", flush=True)


def main() -> None:
    mode, path, *rest = sys.argv[1:]
    if mode == "race":
        tag, keys = rest
        anyio.run(race, path, tag, int(keys))
    elif mode == "crash":
        anyio.run(crash, path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
