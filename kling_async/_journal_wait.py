"""The wait both journals make for a key another instance is creating (a BUSY claim).

Kept apart from ``_journal``, whose vocabulary does no I/O and reads no clock.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from ._journal import Claim, ClaimOutcome

__all__ = ["claim_waiting"]

_FIRST_POLL, _MAX_POLL = 0.005, 0.1  # seconds: waiting for another instance's create to end


async def claim_waiting(
    once: Callable[[], Awaitable[Claim]],
    released: Callable[[], anyio.Event | None],
    wait: float,
) -> Claim:
    """``once()`` until its claim is not BUSY, or ``wait`` seconds have passed: polled
    (5 ms, doubling up to 100 ms) and woken at once by the event ``released()`` gives, which
    the journal sets when this instance lets a key go."""
    deadline = time.monotonic() + wait
    delay = _FIRST_POLL
    while True:
        event = released()
        claim = await once()
        remaining = deadline - time.monotonic()
        if claim.outcome is not ClaimOutcome.BUSY or remaining <= 0:
            return claim
        assert event is not None
        with anyio.move_on_after(min(delay, remaining)):
            await event.wait()
        delay = min(delay * 2, _MAX_POLL)
