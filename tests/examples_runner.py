"""Run the docs' example scripts given as arguments, each in a fresh folder, one after another.

Prints one line per script: ``@example-result`` and ``[file name, null]`` in JSON when it
ran to its end, or ``[file name, traceback]``. The examples use the default poll policy,
whose first poll of a task is seconds away; against the emulator (which answers at once)
that is only waiting, so this process shortens the default policy's waits and keeps
everything else as written.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

import kling_async._session
from kling_async import PollPolicy

PREFIX = "@example-result "


def fast_poll_policy() -> PollPolicy:
    """The default schedule's shape, in hundredths of its seconds."""
    return PollPolicy(
        first_delay=0.02, interval=0.02, list_interval=0.02, min_duration=0.0, max_delay=0.05
    )


def main(paths: list[str]) -> None:
    kling_async._session.PollPolicy = fast_poll_policy  # type: ignore[misc,assignment]
    home = Path.cwd()
    for path in paths:
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)
            try:
                runpy.run_path(path, run_name="__main__")
                error = None
            except BaseException:
                error = traceback.format_exc()
            finally:
                os.chdir(home)
        print(PREFIX + json.dumps([Path(path).name, error]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
