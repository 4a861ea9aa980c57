"""Test helpers for code that talks to Kling: an emulator of the video-extend API, and a
transport without sockets.

`KlingEmulator` is a real HTTP server on loopback that answers like Kling (and like the
gateways in front of it), with `Fault` injection on requests, media downloads and callbacks, a
log of `RecordedRequest` and `RecordedCallback` entries, and the `EmulatedTask` objects it
created. The pytest plugin (`kling_async.testing.pytest_plugin`) offers it as the
``kling_emulator`` fixture. `MockTransport` answers a session's requests from a function
instead (``KlingSession(transport=...)``), and `emulator_command` gives a command-line
parser the emulator's options (``kling-async emulator`` and ``python -m kling_async.testing``
use it).
"""

from __future__ import annotations

from kling_async.testing._command import emulator_command
from kling_async.testing._emulator import KlingEmulator
from kling_async.testing._fault import Fault
from kling_async.testing._mock import MockTransport
from kling_async.testing._records import EmulatedTask, RecordedCallback, RecordedRequest

__all__ = [
    "EmulatedTask",
    "Fault",
    "KlingEmulator",
    "MockTransport",
    "RecordedCallback",
    "RecordedRequest",
    "emulator_command",
]
