"""The fleet's link to its Redis: one client, one account's key names, this session's lease.

Sessions in many processes and hosts that share one Redis and one Kling account are one
client (``docs/fleet.md``). Each session holds a `Fleet`: the Redis client (made from a URL
and closed with the session, or borrowed and never closed), the account's key prefix (so
that two accounts may share a Redis), the session's *instance* id and its lease, and the
session's background loops (the lease's renewal and whatever the shared implementations
start). Every Redis failure comes out of `Fleet.guard` as a typed `FleetError`.

Only this module and the ``_redis_*`` modules import ``redis`` (the optional extra
``kling-async[redis]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .errors import FleetError, FleetUnavailableError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "LEASE",
    "RENEW_EVERY",
    "Fleet",
    "check_cancelled",
    "check_fleet",
    "key_of",
    "text",
]

logger = logging.getLogger("kling_async")

LEASE = 5.0
"""Seconds an instance's lease (and so its claims and its leadership) outlives its last
renewal: a process that dies is taken over this long after."""
RENEW_EVERY = 1.0
"""Seconds between an instance's renewals of its lease."""
_SOCKET_TIMEOUT = 5.0  # a Redis command that takes longer is a Redis that is gone
_CONNECTIONS = 64  # per session: its background loops hold a few, the rest serve commands
_LISTEN_BLOCK = 1.0  # seconds a subscription's read blocks (under the socket timeout)
_RETRY = 1.0  # seconds between a loop's tries while Redis is away
_PREFIX = "kling-async"


def check_fleet(fleet: object) -> str | aioredis.Redis | None:
    """``fleet`` if it is None, a Redis URL or a ``redis.asyncio.Redis``; ``TypeError`` or
    ``ValueError`` otherwise, and ``RuntimeError`` when the ``redis`` extra is missing."""
    if fleet is None:
        return None
    if isinstance(fleet, str):
        if not fleet.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "fleet must be a Redis URL (redis://host:port/db, rediss://, unix://) "
                "or a redis.asyncio.Redis client"
            )
        _redis_module()
        return fleet
    module = _redis_module()
    if not isinstance(fleet, module.Redis):
        raise TypeError(
            f"fleet must be a Redis URL or a redis.asyncio.Redis, not {type(fleet).__name__}"
        )
    return cast("aioredis.Redis", fleet)


def key_of(account: str, *parts: str) -> str:
    """The Redis key ``parts`` of ``account``: ``kling-async:<account>:<parts...>``."""
    return ":".join((_PREFIX, account, *parts))


def text(value: object) -> str:
    """A Redis reply value as text: bytes from a default client, str from one made with
    ``decode_responses=True`` (a borrowed client may be either)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def check_cancelled() -> None:
    """Raise `asyncio.CancelledError` if the running task was asked to stop.

    A Redis call that a cancellation meets at the wrong moment may swallow it (seen with
    redis-py 8 on Python 3.11: a blocking XREAD returned normally afterwards); a background
    loop calls this after each Redis call so that it ends with its fleet at once.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


def _redis_module() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as error:  # pragma: no cover - the extra is installed in tests
        raise RuntimeError(
            "fleet= needs the redis client: pip install 'kling-async[redis]'"
        ) from error
    return aioredis


class Fleet:
    """One session's link to the fleet: the client, the account's keys, the instance's lease.

    `open` checks that Redis answers and takes the lease; `aclose` stops the background
    loops, drops the lease (so the session's claims end at once, not a lease later) and
    closes the client if it was made here. A callback receiver's link has no ``account``:
    each callback's token names its own, and it takes no lease.
    """

    def __init__(self, fleet: str | aioredis.Redis, *, account: str | None) -> None:
        module = _redis_module()
        if isinstance(fleet, str):
            # A blocking pool: a burst of writes (a thousand waits ending together) queues
            # for a connection instead of failing with "Too many connections".
            pool = module.BlockingConnectionPool.from_url(
                fleet,
                max_connections=_CONNECTIONS,
                timeout=_SOCKET_TIMEOUT,
                socket_timeout=_SOCKET_TIMEOUT,
                socket_connect_timeout=_SOCKET_TIMEOUT,
                health_check_interval=30,
            )
            self.client: aioredis.Redis = module.Redis(connection_pool=pool)
            self._owned = True
        else:
            self.client = fleet
            self._owned = False
        self.account = account
        self.instance = secrets.token_hex(8)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- names --------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """The Redis key ``parts`` of this account: ``kling-async:<account>:<parts...>``."""
        if self.account is None:
            raise RuntimeError("this fleet link serves no one account (a receiver's)")
        return key_of(self.account, *parts)

    def alive_key(self, instance: str) -> str:
        """The key whose existence is ``instance``'s lease."""
        return self.key("alive", instance)

    # -- errors -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self, what: str, *, key: str | None = None) -> Iterator[None]:
        """Turn a Redis failure while doing ``what`` into a typed `FleetError` (cause chained)."""
        import redis.exceptions as rexc

        try:
            yield
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as error:
            raise FleetUnavailableError(
                f"the fleet's Redis did not answer while {what}: {error}", key=key
            ) from error
        except rexc.RedisError as error:
            raise FleetError(f"the fleet's Redis failed while {what}: {error}", key=key) from error

    # -- life ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check that Redis answers and take this instance's lease; `FleetUnavailableError`
        when it does not (nothing was sent to Kling)."""
        with self.guard("opening the session"):
            await self.client.set(self.alive_key(self.instance), "1", px=int(LEASE * 1000))
        self.start(self._renew_lease)

    async def aclose(self) -> None:
        """Stop the background loops, drop the lease, close the client if it is ours."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        # A Redis call that a cancel meets at the wrong moment may swallow it (redis-py on
        # Python 3.11): cancel again until each loop has really ended.
        while tasks:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.1)
            tasks = [task for task in tasks if not task.done()]
        with contextlib.suppress(Exception):
            await self.client.delete(self.alive_key(self.instance))
        if self._owned:
            await self.client.aclose(close_connection_pool=True)

    @property
    def closed(self) -> bool:
        """Whether `aclose` ran."""
        return self._closed

    def start(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` in the background until the session closes (cancelled then, awaited).

        A loop that raises is logged; it is the loop's job to survive Redis trouble.
        """
        task = asyncio.get_running_loop().create_task(self._run(loop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("a fleet background loop stopped")

    async def listen(self, channel: str, heard: Callable[[str], None]) -> None:
        """A background loop (for `start`): call ``heard`` with each message published on
        ``channel``, subscribing again after Redis trouble. Pub/sub loses what is published
        while a subscriber is away: a listener's owner also looks again on its own cadence.
        """
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTEN_BLOCK
                    )
                    check_cancelled()
                    if message is not None:
                        heard(text(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis away: subscribe again in a moment
                logger.debug("the fleet's subscription to %s failed: %s", channel, error)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(_RETRY)

    async def alive(self, instance: str) -> bool:
        """Whether ``instance``'s lease still runs."""
        with self.guard("reading a lease"):
            return bool(await self.client.exists(self.alive_key(instance)))

    async def _renew_lease(self) -> None:
        """Renew the lease every `RENEW_EVERY` seconds; when a renewal finds it gone (Redis
        lost it, or this process stalled past it), take a new one: a key another instance
        took over meanwhile is fenced (its next write raises `ClaimLostError`)."""
        key = self.alive_key(self.instance)
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                renewed = await self.client.set(key, "1", px=int(LEASE * 1000), xx=True)
                if not renewed:
                    logger.warning("this session's fleet lease had ended; taking a new one")
                    await self.client.set(key, "1", px=int(LEASE * 1000))
            except Exception as error:  # Redis away: keep trying, the lease may lapse
                logger.warning("could not renew the fleet lease: %s", error)
