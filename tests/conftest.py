"""Shared test configuration: every async test runs on asyncio through anyio's pytest plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kling_async import KlingSession
from kling_async.testing import KlingEmulator

from .helpers import official


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Pin the anyio backend: the SDK targets asyncio (aiohttp needs it)."""
    return "asyncio"


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
