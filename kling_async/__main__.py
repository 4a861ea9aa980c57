"""``python -m kling_async``: see :mod:`kling_async._cli`."""

import sys

from ._cli import main

sys.exit(main())
