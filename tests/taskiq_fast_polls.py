"""Imported by the recipe test's taskiq workers, as an extra module on `taskiq worker`'s
command line: the emulator on loopback answers at once and its tasks end in a second, so
the sessions' default waits are shortened, as the docs' example scripts get them
(``examples_runner.py``). The recipe itself runs as written.

- the default poll policy, in hundredths of its seconds;
- the default socket timeouts, 1 s: they also set how long a create left in doubt by a
  killed worker is looked up before it may be sent again (``connect + 2 * read``, 130 s by
  default), which a kill between a create's send and its arrival makes the test wait out.
"""

from __future__ import annotations

import kling_async._session
from kling_async import KlingSession

from .examples_runner import fast_poll_policy

kling_async._session.PollPolicy = fast_poll_policy  # type: ignore[misc,assignment]
_defaults = KlingSession.__init__.__kwdefaults__
assert _defaults is not None
_defaults.update(connect_timeout=1.0, read_timeout=1.0)
