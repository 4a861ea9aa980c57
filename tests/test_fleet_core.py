"""The fleet's Redis link: a real redis-server, typed errors, the instance's lease."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from kling_async import FleetUnavailableError, KlingError
from kling_async._config import configure
from kling_async._fleet import LEASE, Fleet, check_fleet

from .helpers import official
from .redis_server import free_port

pytestmark = pytest.mark.anyio


def test_account_names_hide_the_key_and_tell_accounts_apart() -> None:
    """Two accounts on one Redis get two prefixes; the key itself never appears."""

    def account(**keys: str) -> str:
        config = configure(
            base_url=None,
            max_in_flight=1,
            connect_timeout=1,
            read_timeout=1,
            stamp_external_id=None,
            list_refresh=None,
            allow_insecure_http=False,
            max_response_bytes=1,
            environ={},
            **{"api_key": None, "access_key": None, "secret_key": None, **keys},
        )
        return config.account

    one = account(access_key="ak-1", secret_key="sk")
    assert one == account(access_key="ak-1", secret_key="other")  # the secret is not in it
    assert one != account(access_key="ak-2", secret_key="sk")
    assert account(api_key="gw-1") != account(api_key="gw-2")
    assert "ak-1" not in one


@pytest.mark.parametrize(
    ("value", "error"),
    [(42, TypeError), ("http://localhost:6379", ValueError), ("", ValueError)],
)
def test_a_fleet_that_is_not_redis_is_refused(value: object, error: type[Exception]) -> None:
    """fleet= takes a Redis URL or a redis.asyncio.Redis, nothing else."""
    with pytest.raises(error):
        check_fleet(value)


async def test_open_takes_a_lease_and_close_drops_it(redis_url: str) -> None:
    """An open fleet holds its lease; closing drops it at once (not a lease later)."""
    fleet = Fleet(redis_url, account="a")
    await fleet.open()
    other = Fleet(redis_url, account="a")
    await other.open()
    try:
        assert await other.alive(fleet.instance)
        await fleet.aclose()
        assert not await other.alive(fleet.instance)
    finally:
        await other.aclose()


async def test_a_borrowed_client_is_not_closed(redis_url: str) -> None:
    """A redis.asyncio.Redis passed in is the caller's: the fleet never closes it."""
    client = aioredis.Redis.from_url(redis_url)
    fleet = Fleet(client, account="a")
    await fleet.open()
    await fleet.aclose()
    assert await client.ping()
    await client.aclose()


async def test_an_unreachable_redis_is_a_typed_error() -> None:
    """No Redis behind the URL: FleetUnavailableError, a KlingError, with the cause."""
    fleet = Fleet(f"redis://127.0.0.1:{free_port()}/0", account="a")
    with pytest.raises(FleetUnavailableError) as raised:
        await fleet.open()
    assert isinstance(raised.value, KlingError)
    assert raised.value.__cause__ is not None
    await fleet.aclose()


async def test_the_lease_is_renewed_while_open(redis_url: str) -> None:
    """The lease outlives its first term while the session lives."""
    fleet = Fleet(redis_url, account="a")
    await fleet.open()
    try:
        await asyncio.sleep(LEASE * 0.3)
        ttl = await fleet.client.pttl(fleet.alive_key(fleet.instance))
        assert ttl > LEASE * 1000 * 0.75
    finally:
        await fleet.aclose()


async def test_a_session_on_a_fleet_opens_and_closes_its_link(redis_url: str) -> None:
    """KlingSession(fleet=URL) takes its lease on open and drops it on close."""
    from kling_async.testing import KlingEmulator

    async with KlingEmulator() as emulator:
        session = official(
            emulator,
            fleet=redis_url,
        )
        async with session:
            client = aioredis.Redis.from_url(redis_url)
            assert [key async for key in client.scan_iter("kling-async:*:alive:*")]
        assert not [key async for key in client.scan_iter("kling-async:*:alive:*")]
        await client.aclose()


async def test_a_session_whose_fleet_is_down_sends_nothing() -> None:
    """Redis unreachable when the session opens: FleetUnavailableError, no request sent."""
    from kling_async.testing import KlingEmulator

    async with KlingEmulator() as emulator:
        session = official(
            emulator,
            fleet=f"redis://127.0.0.1:{free_port()}/0",
        )
        with pytest.raises(FleetUnavailableError):
            await session.__aenter__()
        assert [] == emulator.requests


def test_max_parallel_tasks_is_checked_before_anything_is_sent() -> None:
    """A limit that is not a positive int is refused at construction."""
    from kling_async import KlingSession

    with pytest.raises(ValueError, match="max_parallel_tasks"):
        KlingSession(access_key="ak", secret_key="sk", max_parallel_tasks=0)
    with pytest.raises(TypeError, match="max_parallel_tasks"):
        KlingSession(access_key="ak", secret_key="sk", max_parallel_tasks=True)
