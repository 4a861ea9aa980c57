"""A process of the fleet for the pace's tests (run by tests/test_fleet_pace.py), and the
request layer both sides build: a `Wire` with the DEFAULT retry policy, paced by `RedisPace`.

python tests/fleet_pace_child.py BASE_URL ACCESS SECRET REDIS_URL ACCOUNT WORKERS
    lists tasks with WORKERS loops (a short pause between requests) after "go" on stdin, and
    prints every 50 ms one JSON line: {"t": wall time, "on": pace.enabled, "rate": pace.rate,
    "sent": requests sent, "rate_limited": 1302s met, "other": other exceptions};
    stops on "stop" and prints {"done": ..., "round_trips": ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator

from kling_async import RetryPolicy, sansio
from kling_async._aiohttp_transport import AiohttpTransport, open_http_session
from kling_async._auth import JWTSigner
from kling_async._fleet import Fleet
from kling_async._redis_pace import RedisPace
from kling_async._wire import Wire
from kling_async.errors import KlingError, RateLimitError

PAUSE = 0.02  # seconds a worker waits between its requests (about 40 a second per worker)


@contextlib.asynccontextmanager
async def paced_wire(
    base_url: str, access: str, secret: str, redis_url: str, account: str
) -> AsyncIterator[tuple[Wire, RedisPace]]:
    """An open Wire on the emulator with the DEFAULT retry policy and a fleet pace."""
    fleet = Fleet(redis_url, account=account)
    await fleet.open()
    pace = RedisPace(fleet)
    wire = Wire(
        base_url=base_url,
        auth=JWTSigner(access, secret),
        retry_policy=RetryPolicy(),
        max_in_flight=64,
        create_deadline=30.0,
        pace=pace,
    )
    http = open_http_session(limit=64, trace_configs=())
    try:
        wire.open(AiohttpTransport(http, connect_timeout=5.0, read_timeout=30.0, max_body=1 << 20))
        pace.start()
        yield wire, pace
    finally:
        wire.close()
        await http.close()
        await fleet.aclose()


class Counts:
    """What one side's requests met."""

    def __init__(self) -> None:
        self.rate_limited = 0
        self.other: list[str] = []


async def list_loop(wire: Wire, counts: Counts, stop: asyncio.Event) -> None:
    """List page 1 again and again until ``stop``."""
    request = sansio.list_request(wire.base_url, 1, 1)
    while not stop.is_set():
        try:
            await wire.call(request, sansio.parse_task_list)
        except RateLimitError:
            counts.rate_limited += 1
        except KlingError as error:
            counts.other.append(repr(error))
        except Exception as error:  # anything else leaking is what the test looks for
            counts.other.append(repr(error))
        await asyncio.sleep(PAUSE)


async def main(base_url: str, access: str, secret: str, redis_url: str, account: str) -> None:
    workers = int(sys.argv[6])
    loop = asyncio.get_running_loop()
    async with paced_wire(base_url, access, secret, redis_url, account) as (wire, pace):
        print(json.dumps({"ready": True}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        stop = asyncio.Event()
        counts = Counts()
        tasks = [asyncio.create_task(list_loop(wire, counts, stop)) for _ in range(workers)]
        stopping = loop.run_in_executor(None, sys.stdin.readline)  # "stop"
        while not stopping.done():
            line = {
                "t": time.time(),
                "on": pace.enabled,
                "rate": pace.rate,
                "sent": wire.requests_sent,
                "rate_limited": counts.rate_limited,
                "other": len(counts.other),
            }
            print(json.dumps(line), flush=True)
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        done = {"done": True, "round_trips": pace.round_trips, "other": counts.other}
        print(json.dumps(done), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
