"""Shared test configuration: every async test runs on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from kling_async import KlingSession
from kling_async.testing import KlingEmulator

from .helpers import official
from .redis_server import RedisServer, redis_available


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Pin the anyio backend: the SDK targets asyncio (aiohttp needs it)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own Kling settings must not change what the tests see (a webhook
    secret in the environment would make every receiver of the suite demand signatures)."""
    names = ("KLING_WEBHOOK_SECRET", "KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY")
    for name in (*names, "KLING_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def emu() -> AsyncIterator[KlingEmulator]:
    """A default emulator: tasks advance one status per query."""
    async with KlingEmulator() as emulator:
        yield emulator


@pytest.fixture
async def session(emu: KlingEmulator) -> AsyncIterator[KlingSession]:
    """An open official-style session on the emulator with instant policies."""
    async with official(emu) as opened:
        yield opened


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real ``redis-server`` for the run (on a free port, in a temporary directory)."""
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run installs it (as root)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The test's own empty Redis (the shared server, flushed before each test)."""
    with socket.create_connection(("127.0.0.1", redis_server.port)) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")
    return redis_server.url
