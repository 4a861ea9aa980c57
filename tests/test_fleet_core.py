"""The fleet's Redis link: a real redis-server, typed errors, the instance's lease."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from kling_async import FleetUnavailableError, KlingError
from kling_async._fleet import LEASE, Fleet, account_of, check_fleet

from .redis_server import free_port

pytestmark = pytest.mark.anyio


def test_account_names_hide_the_key_and_tell_accounts_apart() -> None:
    """Two accounts on one Redis get two prefixes; the key itself never appears."""
    one = account_of("https://api.klingai.com", "ak-1")
    assert one != account_of("https://api.klingai.com", "ak-2")
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
