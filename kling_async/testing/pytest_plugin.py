"""pytest plugin of kling_async: the ``kling_emulator`` fixture.

Registered through the ``pytest11`` entry point. It stays import-light: the emulator (and
aiohttp.web) is imported only when a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kling_async.testing._emulator import KlingEmulator


@pytest.fixture
async def kling_emulator() -> AsyncIterator[KlingEmulator]:
    """A started `KlingEmulator` with default settings, closed after the test.

    Async fixture: use it from tests marked ``@pytest.mark.anyio`` (asyncio backend).
    """
    from kling_async.testing._emulator import KlingEmulator

    async with KlingEmulator() as emulator:
        yield emulator
