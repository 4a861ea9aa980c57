"""Work a session runs beside its calls (a chain's links), ended when the session closes.

Such work outlives the call that started it but never the session (``docs/chains.md``,
"A chain and its session"): closing the session cancels what still runs and waits for it
to end, before the journal it writes to is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]


class Background:
    """One session's background tasks: started by its calls, cancelled and awaited at close."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` until it ends or the session closes; it must handle its own errors."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel what still runs and wait until all of it has ended."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
