"""``python -m kling_async``: the command line, the same as ``kling-async`` (see `_cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
