"""Run the Kling emulator from the command line: ``python -m kling_async.testing``.

The same command is ``kling-async emulator`` (both are built with `emulator_command`).
Useful to try a client by hand or from another process; stops on SIGINT/SIGTERM (Ctrl+C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kling_async.testing import emulator_command

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until SIGINT/SIGTERM; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m kling_async.testing")
    serve = emulator_command(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse already printed
        return exit.code if isinstance(exit.code, int) else 2 if exit.code else 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
