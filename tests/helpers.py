"""Session factories shared by the test modules."""

from __future__ import annotations

from typing import Any

from kling_async import KlingSession, PollPolicy, RetryPolicy
from kling_async.testing import KlingEmulator


def official(emulator: KlingEmulator, **options: Any) -> KlingSession:
    """A session like one against Kling itself: access key + secret key, stamping on."""
    options.setdefault("poll_policy", PollPolicy.instant())
    options.setdefault("retry_policy", RetryPolicy.instant())
    return KlingSession(
        access_key=emulator.access_key,
        secret_key=emulator.secret_key,
        base_url=emulator.base_url,
        **options,
    )


def gateway(emulator: KlingEmulator, **options: Any) -> KlingSession:
    """A session like one through a gateway: Bearer api key under /kling, no stamping."""
    options.setdefault("poll_policy", PollPolicy.instant())
    options.setdefault("retry_policy", RetryPolicy.instant())
    return KlingSession(emulator.api_key, base_url=emulator.gateway_url, **options)
